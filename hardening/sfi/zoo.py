"""Architectures of published pre-trained models that are not built by ``diehardlab.hardening.models``.

They let ``diehard sfi`` and ``diehard select`` load those weights with ``--factory``, e.g. the CIFAR-10 LeNet
that the ``mrfi`` package ships (``mrfi_dataset/lenet_cifar10.pth``, inputs normalised with mean 0.5, std 0.5).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LeNet5(nn.Module):
    """The classic CIFAR-10 LeNet-5 (two 5x5 convs with 2x2 max-pooling, three linear layers); 62,006 weights."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 6, 5)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = x.flatten(1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)
