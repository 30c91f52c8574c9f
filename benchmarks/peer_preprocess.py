#!/usr/bin/python3
"""The Python peer for benchmarks/bench_preprocess.cpp: the same transforms
done the way IBM's Adversarial Robustness Toolbox does them
(art.defences.preprocessor: FeatureSqueezing, SpatialSmoothing,
JpegCompression; gaussian blur via scipy as GaussianAugmentation users do):
numpy rint for bit depth, scipy.ndimage.median_filter over the batch, PIL per
image for JPEG, scipy.ndimage.gaussian_filter, torch interpolate for resize.

Prints one JSON object: {name: milliseconds per batch (median of repeats)}.
Run with Debian's interpreter: /usr/bin/python3 benchmarks/peer_preprocess.py
"""
import io
import json
import sys
import time

import numpy as np
import torch
from PIL import Image
from scipy import ndimage


def bit_depth(x, bits=4):
    levels = 2**bits - 1
    return np.rint(x * levels) / levels


def median(x, k):
    return ndimage.median_filter(x, size=(1, 1, k, k), mode="reflect")


def jpeg(x, quality=75):
    out = np.empty_like(x)
    for i in range(x.shape[0]):
        img = (np.transpose(x[i], (1, 2, 0)) * 255).round().astype(np.uint8)
        mode = "L" if img.shape[2] == 1 else "RGB"
        buf = io.BytesIO()
        Image.fromarray(img.squeeze(2) if mode == "L" else img, mode).save(buf, format="jpeg", quality=quality)
        dec = np.asarray(Image.open(io.BytesIO(buf.getvalue())), dtype=np.float32) / 255
        out[i] = dec[None] if mode == "L" else np.transpose(dec, (2, 0, 1))
    return out


def blur(x, sigma=1.0, k=5):
    radius = k // 2  # truncate so that the kernel has k taps, like the C++ side
    return ndimage.gaussian_filter(x, sigma=(0, 0, sigma, sigma), truncate=radius / sigma, mode="mirror")


def resize_half(x):
    t = torch.from_numpy(x)
    h, w = t.shape[2], t.shape[3]
    small = torch.nn.functional.interpolate(t, size=(h // 2, w // 2), mode="area")
    return torch.nn.functional.interpolate(small, size=(h, w), mode="bilinear", align_corners=False).numpy()


def normalize(x):
    return (x - 0.5) / 0.25


TRANSFORMS = {
    "BitDepth4": bit_depth,
    "Median2x2": lambda x: median(x, 2),
    "Median3x3": lambda x: median(x, 3),
    "Jpeg75": jpeg,
    "Blur5": blur,
    "ResizeHalf": resize_half,
    "Normalize": normalize,
}


def timeit(fn, x, min_seconds=1.0):
    fn(x)
    samples = []
    start = time.perf_counter()
    while time.perf_counter() - start < min_seconds or len(samples) < 3:
        t = time.perf_counter()
        fn(x)
        samples.append(time.perf_counter() - t)
    return 1000 * float(np.median(samples))


def main():
    torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else 2)
    rng = np.random.default_rng(0)
    shapes = {"256x1x28x28": (256, 1, 28, 28), "32x3x224x224": (32, 3, 224, 224)}
    results = {}
    for shape_name, shape in shapes.items():
        x = rng.random(shape, dtype=np.float32)
        for name, fn in TRANSFORMS.items():
            results[f"{name} {shape_name}"] = timeit(fn, x)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
