#!/usr/bin/python3
"""Produces the TorchScript interop fixture used by tests/test_torchscript.cpp.

Run with Debian's interpreter (python3-torch installs for /usr/bin/python3):
    /usr/bin/python3 scripts/make_torchscript_fixture.py tests/fixtures

Writes
  tiny_cnn.pt           a small scripted CNN with exported features()/head()
                        and a dropout layer in the head
  tiny_cnn_expected.pt  a scripted container whose attributes hold fixed inputs
                        and the logits/features Python computed for them
"""
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F


class TinyCnn(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.fc1 = nn.Linear(4 * 13 * 13, 16)
        self.dropout = nn.Dropout(0.5)
        self.fc2 = nn.Linear(16, 10)

    @torch.jit.export
    def features(self, x: torch.Tensor) -> torch.Tensor:
        h = F.max_pool2d(F.relu(self.conv(x)), 2)
        return F.relu(self.fc1(h.flatten(1)))

    @torch.jit.export
    def head(self, f: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.dropout(f))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class Expected(nn.Module):
    def __init__(self, inputs, logits, features):
        super().__init__()
        self.inputs = inputs
        self.logits = logits
        self.features = features

    def forward(self) -> torch.Tensor:
        return self.logits


def main(out_dir):
    torch.manual_seed(1234)
    model = TinyCnn().eval()
    inputs = torch.rand(5, 1, 28, 28)
    with torch.no_grad():
        logits = model(inputs)
        features = model.features(inputs)
    torch.jit.save(torch.jit.script(model), f"{out_dir}/tiny_cnn.pt")
    torch.jit.save(torch.jit.script(Expected(inputs, logits, features)), f"{out_dir}/tiny_cnn_expected.pt")
    print(f"torch {torch.__version__}: wrote {out_dir}/tiny_cnn.pt and tiny_cnn_expected.pt")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures")
