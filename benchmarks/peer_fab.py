#!/usr/bin/python3
"""Reference figures for tests/test_fab.cpp: the reference FAB implementation
(fra31/auto-attack, autoattack/fab_pt.py FABAttack_PT) on the reference CNN
and the 16 images of correctly_classified(16) (the first 16 of the first 64
Fashion-MNIST test images that the model classifies correctly).

Usage: /usr/bin/python3 benchmarks/peer_fab.py <auto-attack checkout>
(the directory that holds autoattack/fab_pt.py; nothing is downloaded).
Prints the per-image minimum-norm L∞ and L2 perturbations (100 iterations,
no random start), FAB-T L∞ at ε = 0.1 and L2 at ε = 1 (50 iterations, 2
restarts) on the first 8 images.
"""
import gzip
import os
import sys
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from reference_cnn import ReferenceCnn  # noqa: E402  same directory

DATA = "/usr/share/datasets/fashion-mnist"


def idx(name, offset):
    with gzip.open(os.path.join(DATA, name)) as f:
        return np.frombuffer(f.read(), np.uint8, offset=offset)


def main():
    sys.path.insert(0, sys.argv[1])
    from autoattack.fab_pt import FABAttack_PT

    torch.set_num_threads(2)
    scripted = torch.jit.load(os.path.join(ROOT, "tests/fixtures/reference_cnn.pt"))
    model = ReferenceCnn()
    state = {n[2:]: p for n, p in scripted.named_parameters()}  # "p.conv1.weight" -> "conv1.weight"
    state.update({n[2:]: b for n, b in scripted.named_buffers()})
    model.load_state_dict(state)
    model.eval()
    n = 16
    images = idx("t10k-images-idx3-ubyte.gz", 16)[: 4 * n * 784].reshape(-1, 1, 28, 28).astype(np.float32) / 255
    labels = idx("t10k-labels-idx1-ubyte.gz", 8)[: 4 * n].astype(np.int64)
    images, labels = torch.tensor(images), torch.tensor(labels)
    with torch.no_grad():
        correct = (model(images).argmax(1) == labels).nonzero().flatten()[:n]
    x, y = images[correct], labels[correct]

    def norms(adv, norm):
        d = (adv - x[: adv.shape[0]]).flatten(1)
        return d.abs().max(1)[0] if norm == "Linf" else d.norm(dim=1)

    def fooled(adv):
        with torch.no_grad():
            return model(adv).argmax(1) != y[: adv.shape[0]]

    for norm in ("Linf", "L2"):
        attack = FABAttack_PT(model, norm=norm, n_iter=100, device="cpu")
        start = time.time()
        adv = attack.attack_single_run(x, y, use_rand_start=False, is_targeted=False)
        seconds = time.time() - start
        r = norms(adv, norm)
        print(f"{norm} minimum norm: fooled {int(fooled(adv).sum())}/16, median {r.median():.6f}, "
              f"{seconds:.2f} s")
        print("  " + ", ".join(f"{v:.6f}f" for v in r.tolist()))
    attack = FABAttack_PT(model, norm="Linf", n_iter=100, eps=0.1, targeted=True, n_target_classes=9, device="cpu")
    adv = attack.perturb(x, y)
    ok = fooled(adv)
    print(f"FAB-T Linf eps 0.1: fooled {int(ok.sum())}/16, median norm {norms(adv, 'Linf')[ok].median():.6f}")
    attack = FABAttack_PT(model, norm="L2", n_iter=50, n_restarts=2, eps=1.0, device="cpu")
    adv = attack.perturb(x[:8], y[:8])
    print(f"L2 eps 1, 50 iterations, 2 restarts: fooled {int(fooled(adv).sum())}/8")


if __name__ == "__main__":
    main()
