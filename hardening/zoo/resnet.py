"""The suite's ResNets: CIFAR ResNet-20/32/44/56 with option-A shortcuts (CIFAR-10 and GTSRB), ResNet-18 (CIFAR-100).

Written against the definitions of cad-polito-it/dnn-benchmarks (torch/gpu/image_classification/*/fp32/resnet/):
the CIFAR ResNets are those of akamaster/pytorch_resnet_cifar10 (the suite's ResNet20.th holds their weights),
ResNet-18 the CIFAR-100 one of weiaicunzai/pytorch-cifar100. Module names and shapes are the suite's
(``architectures.json`` checks them); the hardening options come from :mod:`.common`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diehardlab.hardening.layers import PadShortcut
from diehardlab.hardening.zoo.common import Hardening, conv
from torch import nn


class CifarBlock(nn.Module):
    """conv-BN-ReLU, conv-BN, plus the shortcut, ReLU; option A: a parameter-free subsample and zero padding."""

    def __init__(self, cin: int, planes: int, stride: int, h: Hardening):
        super().__init__()
        self.conv1 = conv(cin, planes, 3, stride, 1)
        self.bn1, self.relu1 = h.bn_act(planes)
        self.conv2 = conv(planes, planes, 3, 1, 1)
        self.bn2 = h.bn(planes)
        self.relu2 = h.act_only()
        # (the suite pads planes // 4 channels on each side, which is PadShortcut's split for these widths)
        self.shortcut = PadShortcut(cin, planes, 2) if stride != 1 or cin != planes else nn.Sequential()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """16/32/64-channel stages of ``n`` blocks; global average pool (a kernel the size of the map); linear."""

    def __init__(self, n: int, num_classes: int, h: Hardening):
        super().__init__()
        self.conv1 = conv(3, 16, 3, 1, 1)
        self.bn1, self.relu = h.bn_act(16)
        cin = 16
        for i, planes in enumerate((16, 32, 64)):
            blocks = []
            for j in range(n):
                blocks.append(CifarBlock(cin, planes, 2 if i > 0 and j == 0 else 1, h))
                cin = planes
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.filter = h.classifier_filter()
        self.linear = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        # avg_pool2d over the whole map, as the suite (8x8 for 32x32 CIFAR images, 13x13 for 50x50 GTSRB)
        out = F.avg_pool2d(out, out.shape[3]).flatten(1)
        return self.linear(self.filter(out))


def cifar_resnet(depth: int):
    def build(num_classes: int, h: Hardening) -> nn.Module:
        return CifarResNet((depth - 2) // 6, num_classes, h)

    return build


class Resnet18Block(nn.Module):
    """``residual_function`` (conv-BN-ReLU-conv-BN) plus ``shortcut`` (identity or 1x1 conv-BN), then ReLU."""

    def __init__(self, cin: int, cout: int, stride: int, h: Hardening):
        super().__init__()
        bn1, act1 = h.bn_act(cout)
        self.residual_function = nn.Sequential(
            conv(cin, cout, 3, stride, 1), bn1, act1, conv(cout, cout, 3, 1, 1), h.bn(cout)
        )
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(conv(cin, cout, 1, stride), h.bn(cout))
        self.relu = h.act_only()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.residual_function(x) + self.shortcut(x))


class ResNet18(nn.Module):
    """CIFAR ResNet-18: a 3x3 stem (no pooling), stages conv2_x..conv5_x of 2 blocks (64..512), pool, fc."""

    def __init__(self, num_classes: int, h: Hardening):
        super().__init__()
        bn, act = h.bn_act(64)
        self.conv1 = nn.Sequential(conv(3, 64, 3, 1, 1), bn, act)
        cin = 64
        for i, (cout, stride) in enumerate(((64, 1), (128, 2), (256, 2), (512, 2))):
            stage = nn.Sequential(Resnet18Block(cin, cout, stride, h), Resnet18Block(cout, cout, 1, h))
            setattr(self, f"conv{i + 2}_x", stage)
            cin = cout
        self.avg_pool = nn.AdaptiveAvgPool2d((1, 1))
        self.filter = h.classifier_filter()
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv5_x(self.conv4_x(self.conv3_x(self.conv2_x(self.conv1(x)))))
        return self.fc(self.filter(self.avg_pool(out).flatten(1)))


def resnet18(num_classes: int, h: Hardening) -> nn.Module:
    return ResNet18(num_classes, h)
