#!/usr/bin/python3
"""Blacklight's secret salt, three ways, on Fashion-MNIST (docs/concealment.md, "Secret salt").

A model of QueryMonitor's fingerprint in Python, to compare quantisation
variants that Parry does not all implement:
  unsalted   floor(t / 50)                          (Blacklight's paper)
  official   floor(((t + s_i) mod 255) / 50), s_i uniform in [0, 255)
                                                    (the authors' code, also IBM ART's BlacklightDetector)
  step       floor((t + s_i) / 50), s_i uniform in [0, 50)
  half       floor((t + s_i) / 50), s_i uniform in [0, 25)   (Parry's salt)
with t the 8-bit value, windows of 20, the 50 largest distinct window hashes
and matching by exact count (brute force over an inverted index). The hash is
BLAKE2b-64 instead of XXH3-64: any 64-bit hash gives the same counts up to
collisions. Two measurements:
  1. benign false positives: the first N test images in sequence, the most
     hashes each shares with any earlier one, the share at or above 25;
  2. an attacker who knows the step (edge-aware: every value within ε of an
     unsalted edge moved 0.5 just across it) or spends ε blindly (random
     signs ±ε on every value; also at ε = 1, 2, 3 and 5 /255, where dense
     noise is small): the share of 300 perturbed copies that still share
     >= 25 hashes with their original.

Usage: monitor_salt_variants.py [N=2000] [fashion-mnist dir]
Needs only Python's standard library and PyTorch (for the tensors).
"""
import collections
import gzip
import hashlib
import sys

import torch

N = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
DATA = sys.argv[2] if len(sys.argv) > 2 else "/usr/share/datasets/fashion-mnist"
STEP, WINDOW, KEPT, THRESHOLD = 50.0, 20, 50, 25

raw = gzip.open(f"{DATA}/t10k-images-idx3-ubyte.gz").read()
images = torch.frombuffer(bytearray(raw[16:]), dtype=torch.uint8).reshape(-1, 784).to(torch.float64)
generator = torch.Generator().manual_seed(1)
uniform = torch.rand(784, generator=generator, dtype=torch.float64)


def levels(t, variant):
    if variant == "unsalted":
        return torch.floor(t / STEP + 1e-6)
    if variant == "official":
        return torch.floor(torch.remainder(t + 255 * uniform, 255) / STEP)
    if variant == "step":
        return torch.floor((t + STEP * uniform) / STEP)
    return torch.floor((t + STEP / 2 * uniform) / STEP)


def fingerprint(t, variant):
    q = bytes(levels(t, variant).to(torch.uint8).tolist())
    hashes = {int.from_bytes(hashlib.blake2b(q[i:i + WINDOW], digest_size=8).digest(), "little")
              for i in range(len(q) - WINDOW + 1)}
    return sorted(hashes, reverse=True)[:KEPT]


def edge_aware(t, eps):
    low = torch.floor(t / STEP + 1e-6) * STEP
    high = low + STEP
    up, down = high - t + 0.5, t - low + 0.5
    up_ok = (high <= 254.5) & (up <= 255 * eps)
    down_ok = (low >= 1) & (down <= 255 * eps)
    go_up = up_ok & (~down_ok | (up <= down))
    go_down = down_ok & ~go_up
    return torch.where(go_up, high + 0.5, torch.where(go_down, low - 0.5, t)).clamp(0, 255)


def random_signs(t, eps):
    signs = torch.randint(0, 2, t.shape, generator=generator, dtype=torch.float64) * 2 - 1
    return (t + signs * 255 * eps).clamp(0, 255)


print(f"| variant | benign: median shared | p99 | max | false positives at {THRESHOLD} (of {N}) |")
print("| --- | ---: | ---: | ---: | ---: |")
rows = {}
for variant in ("unsalted", "official", "step", "half"):
    index = collections.defaultdict(list)
    best = []
    for k in range(N):
        prints = fingerprint(images[k], variant)
        counts = collections.Counter(j for h in prints for j in index[h])
        best.append(max(counts.values()) if counts else 0)
        for h in prints:
            index[h].append(k)
    b = torch.tensor(best, dtype=torch.float64)
    flagged = int((b >= THRESHOLD).sum())
    print(f"| {variant} | {b.median().item():.0f} | {b.quantile(0.99).item():.0f} | {b.max().item():.0f} | "
          f"{flagged} ({100 * flagged / N:.2f} %) |")

print("\nMean L2 of the change (pixels in [0, 1]), the same for every variant:")
for name, perturb in (("edge-aware", edge_aware), ("random signs", random_signs)):
    norms = []
    for eps in (0.02, 0.05, 0.1):
        norms.append(sum(((perturb(images[k], eps) - images[k]) / 255).norm().item() for k in range(300)) / 300)
    print(f"- {name}: " + ", ".join(f"ε = {e}: {n:.2f}" for e, n in zip((0.02, 0.05, 0.1), norms)))
print("\n| variant | attacker | ε = 1/255 | 2/255 | 3/255 | 5/255 | 0.02 | 0.05 | 0.1 |")
print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
for variant in ("unsalted", "official", "step", "half"):
    for name, perturb in (("edge-aware", edge_aware), ("random signs", random_signs)):
        shares = []
        for eps in (1 / 255, 2 / 255, 3 / 255, 5 / 255, 0.02, 0.05, 0.1):
            still = sum(len(set(fingerprint(images[k], variant)) & set(fingerprint(perturb(images[k], eps), variant)))
                        >= THRESHOLD for k in range(300))
            shares.append(f"{100 * still / 300:.0f} %")
        print(f"| {variant} | {name} | " + " | ".join(shares) + " |")
