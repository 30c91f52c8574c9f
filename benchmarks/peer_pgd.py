#!/usr/bin/python3
"""Python PyTorch peer for benchmarks/bench_attack.cpp: the reference CNN's
architecture, batch 64, L∞ PGD ε = 0.1, 10 steps of 0.01, 2 threads.
Two variants: input-only torch.autograd.grad (the efficient way) and
loss.backward() (as AdverTorch's perturb_iterative does).
Prints JSON {variant: milliseconds per attack (median)}.
"""
import json
import time

import torch
import torch.nn.functional as F

from reference_cnn import ReferenceCnn  # same directory

STEPS = 10


def pgd(model, x, y, input_only):
    adv = (x + (torch.rand_like(x) * 2 - 1) * 0.1).clamp(0, 1)
    for _ in range(STEPS):
        adv = adv.detach().requires_grad_(True)
        loss = F.cross_entropy(model(adv), y, reduction="sum")
        if input_only:
            (grad,) = torch.autograd.grad(loss, [adv])
        else:
            loss.backward()
            grad = adv.grad
        adv = adv.detach() + 0.01 * grad.sign()
        adv = torch.min(torch.max(adv, x - 0.1), x + 0.1).clamp(0, 1)
    if not input_only:
        model.zero_grad()
    return adv


def timeit(fn, min_seconds=3.0):
    fn()
    samples = []
    start = time.perf_counter()
    while time.perf_counter() - start < min_seconds or len(samples) < 5:
        t = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t)
    samples.sort()
    return 1000 * samples[len(samples) // 2]


def main():
    torch.set_num_threads(2)
    torch.manual_seed(0)
    model = ReferenceCnn().eval()
    x = torch.rand(64, 1, 28, 28)
    y = torch.randint(0, 10, (64,))
    print(json.dumps({
        "input_only": timeit(lambda: pgd(model, x, y, True)),
        "backward": timeit(lambda: pgd(model, x, y, False)),
    }))


if __name__ == "__main__":
    main()
