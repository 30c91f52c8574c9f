#!/usr/bin/python3
"""Produces the tensor-file fixtures used by tests/test_image_source.cpp.

Run with Debian's interpreter (python3-torch installs for /usr/bin/python3):
    /usr/bin/python3 scripts/make_data_fixture.py tests/fixtures

Writes (each a few KB; torch.save's default zip format unless noted)
  tensors_rgb.pt            12 images 3x8x8 uint8, labels in 0..2, 3 class names
  tensors_rgb_expected.json the same pixels and labels as plain JSON numbers
  tensors_float.pt          5 images 1x4x4 float32 in [0, 1], no class names
  tensors_float_expected.json  their values (repr of each float32, exact)
  tensors_bad_*.pt          files that open_tensor_file must refuse, one fault each
  tensors_legacy.pt         a good dict saved in the pre-1.6 (non-zip) format
  tensors_one_class_tuple.pt  one class name, given as a tuple (readable)
"""
import json
import os
import sys

import torch


def main(out_dir):
    os.makedirs(out_dir, exist_ok=True)
    g = torch.Generator().manual_seed(14)

    def path(name):
        return os.path.join(out_dir, name)

    images = torch.randint(0, 256, (12, 3, 8, 8), generator=g, dtype=torch.uint8)
    labels = torch.tensor([i % 3 for i in range(12)], dtype=torch.int64)
    classes = ["cat", "dog", "bird"]
    torch.save({"images": images, "labels": labels, "classes": classes}, path("tensors_rgb.pt"))
    with open(path("tensors_rgb_expected.json"), "w") as f:
        json.dump({"shape": list(images.shape), "pixels": images.flatten().tolist(),
                   "labels": labels.tolist(), "classes": classes}, f)

    # Values that are exact in float32 and not multiples of 1/255.
    fimages = torch.rand((5, 1, 4, 4), generator=g, dtype=torch.float32)
    fimages[0, 0, 0, 0] = 0.0
    fimages[0, 0, 0, 1] = 1.0
    flabels = torch.tensor([3, 0, 1, 3, 2], dtype=torch.int64)
    torch.save({"images": fimages, "labels": flabels}, path("tensors_float.pt"))
    with open(path("tensors_float_expected.json"), "w") as f:
        json.dump({"shape": list(fimages.shape), "values": [repr(v) for v in fimages.flatten().tolist()],
                   "labels": flabels.tolist()}, f)

    small = images[:4].clone()
    small_labels = labels[:4].clone()
    bad = {
        # an unknown key beside the right ones
        "bad_keys": {"images": small, "labels": small_labels, "meta": "v2"},
        # no labels (two keys: a one-key dict is pickled with SETITEM, see below)
        "bad_missing": {"images": small, "classes": classes},
        # a one-element list (pickled with APPEND, which LibTorch 1.13's
        # unpickler cannot read: open_tensor_file says to use a tuple)
        "bad_one_class": {"images": small, "labels": torch.zeros(4, dtype=torch.int64), "classes": ["cat"]},
        # int32 images
        "bad_dtype": {"images": small.to(torch.int32), "labels": small_labels},
        # N×H×W instead of N×C×H×W
        "bad_rank": {"images": small[:, 0].clone(), "labels": small_labels},
        # two channels
        "bad_channels": {"images": small[:, :2].clone(), "labels": small_labels},
        # 3 labels for 4 images
        "bad_count": {"images": small, "labels": small_labels[:3].clone()},
        # a label beyond the class names
        "bad_labels": {"images": small, "labels": torch.tensor([0, 1, 2, 5]), "classes": classes},
        # a negative label
        "bad_negative": {"images": small, "labels": torch.tensor([0, -1, 2, 1])},
        # int32 labels
        "bad_label_dtype": {"images": small, "labels": small_labels.to(torch.int32)},
        # two names for labels up to 2
        "bad_classes": {"images": small, "labels": small_labels, "classes": ["cat", "dog"]},
        # class names that are not strings
        "bad_class_type": {"images": small, "labels": small_labels, "classes": [1, 2, 3]},
        # float pixels above 1
        "bad_float": {"images": small.float() / 100.0, "labels": small_labels},
        # a NaN pixel
        "bad_nan": {"images": torch.where(torch.arange(4 * 3 * 8 * 8).view(4, 3, 8, 8) == 7,
                                          torch.tensor(float("nan")), small.float() / 255.0),
                    "labels": small_labels},
    }
    for name, value in bad.items():
        torch.save(value, path("tensors_" + name + ".pt"))
    # not a dict at all
    torch.save(small, path("tensors_bad_not_dict.pt"))
    torch.save({"images": small, "labels": torch.zeros(4, dtype=torch.int64), "classes": ("cat",)},
               path("tensors_one_class_tuple.pt"))
    torch.save({"images": small, "labels": small_labels}, path("tensors_legacy.pt"),
               _use_new_zipfile_serialization=False)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures")
