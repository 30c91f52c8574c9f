#!/usr/bin/python3
"""Python PyTorch peer for benchmarks/adversarial_epoch.cpp: one epoch of
PGD-7 adversarial training of the reference CNN architecture on the first N
Fashion-MNIST training images (the same IDX files), batch 128, Adam 1e-3 with
per-step cosine decay, L∞ ε = 0.1, 7 steps of 2.5ε/7 from a uniform random
start, attack in eval mode with input-only gradients (torch.autograd.grad),
2 threads. Prints JSON {"seconds", "images", "final_loss"}.

    /usr/bin/python3 benchmarks/peer_adversarial_training.py [N=60000]
"""
import gzip
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from reference_cnn import ReferenceCnn  # same directory

DATA = "/usr/share/datasets/fashion-mnist"
EPS, STEPS, BATCH, LR, FINAL = 0.1, 7, 128, 1e-3, 0.05


def read_idx(name):
    for candidate in (name, name + ".gz"):
        path = os.path.join(DATA, candidate)
        if os.path.exists(path):
            opener = gzip.open if path.endswith(".gz") else open
            with opener(path, "rb") as f:
                data = f.read()
            dims = data[3]
            shape = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(dims)]
            return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)
    raise FileNotFoundError(name)


def pgd(model, x, y, gen):
    alpha = 2.5 * EPS / STEPS
    lo, hi = (x - EPS).clamp(min=0), (x + EPS).clamp(max=1)
    adv = torch.min(torch.max(x + (torch.rand(x.shape, generator=gen) * 2 - 1) * EPS, lo), hi)
    for _ in range(STEPS):
        adv.requires_grad_(True)
        loss = F.cross_entropy(model(adv), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, [adv])
        with torch.no_grad():
            adv = torch.min(torch.max(adv + alpha * grad.sign(), lo), hi)
    return adv.detach()


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 60000
    torch.set_num_threads(2)
    images = torch.from_numpy(read_idx("train-images-idx3-ubyte")[:n].copy()).float().div_(255).unsqueeze(1)
    labels = torch.from_numpy(read_idx("train-labels-idx1-ubyte")[:n].astype(np.int64))
    torch.manual_seed(0)
    model = ReferenceCnn()
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    gen = torch.Generator().manual_seed(0)
    steps_total = (n + BATCH - 1) // BATCH
    start = time.perf_counter()
    order = torch.randperm(n, generator=gen)
    loss_sum = 0.0
    for step, begin in enumerate(range(0, n, BATCH)):
        lr = LR * (FINAL + (1 - FINAL) * 0.5 * (1 + math.cos(math.pi * step / steps_total)))
        for group in opt.param_groups:
            group["lr"] = lr
        index = order[begin:begin + BATCH]
        x, y = images[index], labels[index]
        model.eval()
        adv = pgd(model, x, y, gen)
        model.train()
        opt.zero_grad()
        loss = F.cross_entropy(model(adv), y)
        loss.backward()
        opt.step()
        loss_sum += loss.item() * x.shape[0]
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "images": n, "final_loss": loss_sum / n}))


if __name__ == "__main__":
    main()
