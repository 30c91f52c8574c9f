#!/usr/bin/python3
"""Writes Feinman et al.'s MNIST architecture, untrained, as TorchScript.

Feinman, Curtin, Shintre and Gardner, "Detecting Adversarial Samples from
Artifacts" (2017); the architecture is `get_model('mnist')` of the authors'
code (rfeinman/detecting-adversarial-samples, detect/util.py):

    conv 64 3x3 valid, ReLU, conv 64 3x3, ReLU, max-pool 2, dropout 0.5,
    flatten, dense 128, ReLU, dropout 0.5, dense 10 (logits; Keras' softmax
    is left to the loss)

Unlike the reference CNN it has *two* dropout layers, one before the dense
layers, which Monte-Carlo dropout needs active. docs/detectors.md trains it
with `parry train --model` and measures the detectors on it:

    /usr/bin/python3 scripts/make_feinman_model.py feinman-untrained.pt
    build/apps/parry/parry train --model feinman-untrained.pt --epochs 10 --out feinman.pt
    build/benchmarks/parry_detector_table 1000 60000 0 1.20 no-cw paper-eps feinman.pt drop2

The detectors' features are the input of `drop2` (the ReLU of the 128-unit
layer, as in the paper). Weights use PyTorch's default initialisation
(Keras' is Glorot-uniform), seeded with 0.
"""
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F


class FeinmanMnist(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 64, 3)
        self.conv2 = nn.Conv2d(64, 64, 3)
        self.drop1 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(64 * 12 * 12, 128)
        self.drop2 = nn.Dropout(0.5)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x):
        x = F.relu(self.conv2(F.relu(self.conv1(x))))
        x = self.drop1(F.max_pool2d(x, 2))
        x = F.relu(self.fc1(torch.flatten(x, 1)))
        return self.fc2(self.drop2(x))


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: make_feinman_model.py OUT.pt")
    torch.manual_seed(0)
    model = torch.jit.script(FeinmanMnist().eval())
    model.save(sys.argv[1])


if __name__ == "__main__":
    main()
