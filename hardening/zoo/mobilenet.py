"""The suite's CIFAR-10 MobileNetV2 (kuangliu/pytorch-cifar style: stride 1 stem and second stage, 4x4 pool).

Written against cad-polito-it/dnn-benchmarks torch/gpu/image_classification/CIFAR10/fp32/mobilenet/; module
names and shapes are the suite's (57 convolutions, 1 linear).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diehardlab.hardening.zoo.common import Hardening, conv
from torch import nn

# (expansion, out_planes, blocks, stride) per stage
STAGES = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


class InvertedResidual(nn.Module):
    """1x1 expand, 3x3 depthwise, 1x1 project; a residual (identity, or a 1x1 conv-BN) on stride-1 blocks."""

    def __init__(self, cin: int, cout: int, expansion: int, stride: int, h: Hardening):
        super().__init__()
        self.stride = stride
        planes = expansion * cin
        self.conv1 = conv(cin, planes, 1)
        self.bn1, self.relu1 = h.bn_act(planes)
        self.conv2 = conv(planes, planes, 3, stride, 1, groups=planes)
        self.bn2, self.relu2 = h.bn_act(planes)
        self.conv3 = conv(planes, cout, 1)
        self.bn3 = h.bn(cout)
        self.shortcut = nn.Sequential()
        if stride == 1 and cin != cout:
            self.shortcut = nn.Sequential(conv(cin, cout, 1), h.bn(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return out + self.shortcut(x) if self.stride == 1 else out


class MobileNetV2(nn.Module):
    def __init__(self, num_classes: int, h: Hardening):
        super().__init__()
        self.conv1 = conv(3, 32, 3, 1, 1)
        self.bn1, self.relu1 = h.bn_act(32)
        blocks, cin = [], 32
        for expansion, cout, n, stride in STAGES:
            for s in [stride] + [1] * (n - 1):
                blocks.append(InvertedResidual(cin, cout, expansion, s, h))
                cin = cout
        self.layers = nn.Sequential(*blocks)
        self.conv2 = conv(320, 1280, 1)
        self.bn2, self.relu2 = h.bn_act(1280)
        self.filter = h.classifier_filter()
        self.linear = nn.Linear(1280, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(self.relu1(self.bn1(self.conv1(x))))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = F.avg_pool2d(out, 4).flatten(1)
        return self.linear(self.filter(out))


def mobilenetv2(num_classes: int, h: Hardening) -> nn.Module:
    return MobileNetV2(num_classes, h)
