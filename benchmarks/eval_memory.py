#!/usr/bin/python3
"""`parry eval` on a large RGB image folder: speed and peak memory.

    /usr/bin/python3 benchmarks/eval_memory.py [build dir] [work dir] [sizes...]

Exports a torchvision ResNet-18 (random weights, 10 classes) as TorchScript,
writes image folders of 3×224×224 JPEG files (1,000 and 10,000 images by
default, 10 classes), and runs `parry eval` on each with /usr/bin/time -v:
  - clean: no attack, one undefended defense; images/s of the clean pass and
    the peak resident memory, which must not grow with the number of images;
  - PGD-10: the first 16 images attacked with PGD-10 (ε = 8/255); seconds
    per image and PGD run: the evaluation makes two runs per image (the
    transferred one on the bare model and the adaptive one on the Guard), and
    the time of the same evaluation without the attack is subtracted.
Prints a Markdown table. The work dir (default /tmp/parry-eval-memory) keeps
the model and the folders between runs.
"""
import json
import os
import re
import subprocess
import sys

here = os.path.dirname(os.path.abspath(__file__))
build = sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "..", "build")
work = sys.argv[2] if len(sys.argv) > 2 else "/tmp/parry-eval-memory"
sizes = [int(s) for s in sys.argv[3:]] or [1000, 10000]
parry = os.path.join(build, "apps", "parry", "parry")
os.makedirs(work, exist_ok=True)


def export_model(path):
    if os.path.exists(path):
        return
    import torch
    import torchvision
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=10).eval()
    torch.jit.script(net).save(path)


def make_folder(root, n):
    marker = os.path.join(root, ".complete")
    if os.path.exists(marker):
        return
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(0)
    # Smooth random images (noise upsampled), so the JPEG files have a realistic size.
    for i in range(n):
        cls = f"class{i % 10}"
        os.makedirs(os.path.join(root, "test", cls), exist_ok=True)
        small = rng.integers(0, 256, (28, 28, 3), dtype=np.uint8)
        Image.fromarray(small).resize((224, 224), Image.BILINEAR).save(
            os.path.join(root, "test", cls, f"{i:06d}.jpg"), quality=90)
    open(marker, "w").close()


def run_eval(root, config, images, out):
    config_path = os.path.join(work, f"config-{os.path.basename(out)}.json")
    json.dump(config, open(config_path, "w"))
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    command = ["/usr/bin/time", "-v", parry, "--threads", "2", "--data", os.path.join(root, "test"), "eval",
               "--model", os.path.join(work, "resnet18.pt"), "--config", config_path, "--out", out,
               "--images", str(images)]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(done.stderr)
    peak_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr).group(1))
    batches = [float(s) for s in re.findall(r"^batch \d+/\d+ .* in ([0-9.]+) s$", done.stderr, re.M)]
    return peak_kb / 1024, sum(batches)


model = os.path.join(work, "resnet18.pt")
export_model(model)
rows = []
for n in sizes:
    root = os.path.join(work, f"folder-{n}")
    make_folder(root, n + 10)  # 10 more for calibration_images
    clean = {"evaluation": {"images": n, "calibration_images": 10, "latency_repeats": 2, "batch_size": 64},
             "attacks": [], "defenses": [{"name": "undefended", "output": {"policy": "full"}}]}
    peak, seconds = run_eval(root, clean, n, os.path.join(work, f"report-clean-{n}"))
    rows.append(f"| {n:,} | clean | {n / seconds:.1f} images/s | {peak:,.0f} MiB |")
root = os.path.join(work, f"folder-{sizes[0]}")
pgd = {"evaluation": {"images": 16, "epsilons": [8 / 255], "calibration_images": 10, "latency_repeats": 2,
                      "batch_size": 16},
       "attacks": [{"type": "pgd", "steps": 10, "step_ratio": 0.25}],
       "defenses": [{"name": "undefended", "output": {"policy": "full"}}]}
# The same 16 images without the attack: what the batches cost besides PGD-10
# (the clean pass and the PGD-20 examples of the report grid).
base = dict(pgd, attacks=[])
_, base_seconds = run_eval(root, base, 16, os.path.join(work, "report-pgd-base"))
peak, seconds = run_eval(root, pgd, 16, os.path.join(work, "report-pgd"))
per_run = (seconds - base_seconds) / 32
rows.append(f"| 16 | PGD-10, ε = 8/255 | {per_run:.2f} s per image per PGD run | {peak:,.0f} MiB |")
print("| images | run | speed | peak RSS |\n|---:|---|---:|---:|")
print("\n".join(rows))
