"""The reference CNN's architecture in Python PyTorch, shared by the Python
peers of the benchmarks (peer_pgd.py, peer_adversarial_training.py). It
mirrors include/parry/models/reference_cnn.hpp layer for layer."""
import torch.nn as nn
import torch.nn.functional as F


class ReferenceCnn(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3)
        self.bn1 = nn.BatchNorm2d(32)
        self.conv2 = nn.Conv2d(32, 64, 3)
        self.bn2 = nn.BatchNorm2d(64)
        self.fc1 = nn.Linear(64 * 5 * 5, 128)
        self.dropout = nn.Dropout(0.5)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x):
        h = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        h = F.max_pool2d(F.relu(self.bn2(self.conv2(h))), 2)
        return self.fc2(self.dropout(F.relu(self.fc1(h.flatten(1)))))
