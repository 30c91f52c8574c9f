#!/usr/bin/python3
"""Produces the TorchScript interop fixtures used by tests/test_torchscript.cpp.

Run with Debian's interpreter (python3-torch installs for /usr/bin/python3):
    /usr/bin/python3 scripts/make_torchscript_fixture.py tests/fixtures

Writes
  tiny_cnn.pt           a small scripted CNN with exported features()/head()
                        and a dropout layer in the head
  tiny_cnn_expected.pt  a scripted container whose attributes hold fixed inputs
                        and the logits/features Python computed for them
  resnet_small.pt       torchvision's ResNet class (BasicBlock, [1, 1, 1, 1],
                        10 classes) at a quarter of resnet18's width (16..128
                        channels: BasicBlock fixes the width at 64, so the
                        layers are rebuilt narrower; about 1.3 MB instead of
                        resnet18's 45 MB), random weights, for 3x32x32 inputs,
                        without features()/head(): split with
                        Model::with_feature_layer("fc")
  resnet_small_expected.pt  inputs, logits and the input of fc (features)
  functional_dropout.pt an RGB CNN with BatchNorm (non-trivial running
                        statistics) and F.dropout(f, 0.5, self.training) in its
                        head, without dropout modules or features()/head()
  functional_dropout_expected.pt  inputs and the eval-mode logits
"""
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.models.resnet import BasicBlock, ResNet


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


class SmallResNet(ResNet):
    """torchvision's ResNet with one BasicBlock per stage and widths 16..128."""

    def __init__(self, num_classes: int = 10, width: int = 16):
        super().__init__(BasicBlock, [1, 1, 1, 1], num_classes=num_classes)
        self.inplanes = width
        self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.layer1 = self._make_layer(BasicBlock, width, 1)
        self.layer2 = self._make_layer(BasicBlock, 2 * width, 1, stride=2)
        self.layer3 = self._make_layer(BasicBlock, 4 * width, 1, stride=2)
        self.layer4 = self._make_layer(BasicBlock, 8 * width, 1, stride=2)
        self.fc = nn.Linear(8 * width, num_classes)
        # ResNet's initialisation, and random BatchNorm statistics so that
        # eval mode differs from train mode.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.uniform_(m.weight, 0.5, 1.5)
                nn.init.uniform_(m.bias, -0.2, 0.2)
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)


class FunctionalDropoutCnn(nn.Module):
    """Dropout written as most Python code writes it: F.dropout(f, p, self.training)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(16)
        self.fc1 = nn.Linear(16 * 8 * 8, 32)
        self.fc2 = nn.Linear(32, 10)
        for bn in (self.bn1, self.bn2):
            nn.init.uniform_(bn.weight, 0.5, 1.5)
            nn.init.uniform_(bn.bias, -0.2, 0.2)
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        h = F.max_pool2d(F.relu(self.bn2(self.conv2(h))), 2)
        f = F.relu(self.fc1(h.flatten(1)))
        return self.fc2(F.dropout(f, 0.5, self.training))


class Expected(nn.Module):
    def __init__(self, inputs, logits, features=None):
        super().__init__()
        self.inputs = inputs
        self.logits = logits
        self.features = features if features is not None else torch.empty(0)

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

    torch.manual_seed(2024)
    resnet = SmallResNet().eval()
    inputs = torch.rand(4, 3, 32, 32)
    captured = {}
    hook = resnet.fc.register_forward_hook(lambda m, args, out: captured.update(features=args[0].detach()))
    with torch.no_grad():
        logits = resnet(inputs)
    hook.remove()
    torch.jit.save(torch.jit.script(resnet), f"{out_dir}/resnet_small.pt")
    torch.jit.save(torch.jit.script(Expected(inputs, logits, captured["features"])),
                   f"{out_dir}/resnet_small_expected.pt")

    torch.manual_seed(4321)
    cnn = FunctionalDropoutCnn().eval()
    inputs = torch.rand(6, 3, 32, 32)
    with torch.no_grad():
        logits = cnn(inputs)
    torch.jit.save(torch.jit.script(cnn), f"{out_dir}/functional_dropout.pt")
    torch.jit.save(torch.jit.script(Expected(inputs, logits)), f"{out_dir}/functional_dropout_expected.pt")
    print(f"torch {torch.__version__}: wrote tiny_cnn, resnet_small and functional_dropout (+ _expected) to {out_dir}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures")
