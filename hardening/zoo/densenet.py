"""The suite's DenseNets: DenseNet-121/161 for CIFAR-10 (torchvision layout), DenseNet-121 for CIFAR-100/GTSRB.

Written against cad-polito-it/dnn-benchmarks torch/gpu/image_classification/*/fp32/densenet/. The CIFAR-10 ones
keep torchvision's names (``features.denseblock1.denselayer1.conv1``, ``features.transition1.conv``, a 3x3
stride-1 stem ``features.conv0`` and a 3x3 max-pool); the CIFAR-100/GTSRB one is the weiaicunzai
pytorch-cifar100 layout (``conv1``, ``features.dense_block_layer_0.bottle_neck_layer_0.bottle_neck.2``,
transitions of BN, 1x1 conv and 2x2 average pool without a ReLU, the last block named ``dense_block3``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diehardlab.hardening.zoo.common import Hardening, conv
from torch import nn

# -------------------------------------------------------------------------------- CIFAR-10 (torchvision names)


class DenseLayer(nn.Module):
    """BN-ReLU-1x1 conv (bn_size x growth) - BN-ReLU-3x3 conv (growth); output concatenated to the input."""

    def __init__(self, cin: int, growth: int, bn_size: int, h: Hardening):
        super().__init__()
        self.norm1, self.relu1 = h.bn_act(cin)
        self.conv1 = conv(cin, bn_size * growth, 1)
        self.norm2, self.relu2 = h.bn_act(bn_size * growth)
        self.conv2 = conv(bn_size * growth, growth, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        new = self.conv1(self.relu1(self.norm1(x)))
        new = self.conv2(self.relu2(self.norm2(new)))
        return torch.cat([x, new], 1)


class Transition(nn.Module):
    def __init__(self, cin: int, cout: int, h: Hardening):
        super().__init__()
        self.norm, self.relu = h.bn_act(cin)
        self.conv = conv(cin, cout, 1)
        self.pool = nn.AvgPool2d(kernel_size=2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.conv(self.relu(self.norm(x))))


class DenseNetTV(nn.Module):
    def __init__(self, growth: int, blocks: tuple[int, ...], init: int, num_classes: int, h: Hardening, bn_size=4):
        super().__init__()
        self.features = nn.Sequential()
        self.features.add_module("conv0", conv(3, init, 3, 1, 1))
        norm0, relu0 = h.bn_act(init)
        self.features.add_module("norm0", norm0)
        self.features.add_module("relu0", relu0)
        self.features.add_module("pool0", nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
        c = init
        for i, n in enumerate(blocks):
            block = nn.Sequential()
            for j in range(n):
                block.add_module(f"denselayer{j + 1}", DenseLayer(c + j * growth, growth, bn_size, h))
            self.features.add_module(f"denseblock{i + 1}", block)
            c += n * growth
            if i != len(blocks) - 1:
                self.features.add_module(f"transition{i + 1}", Transition(c, c // 2, h))
                c //= 2
        norm5, self.relu = h.bn_act(c)
        self.features.add_module("norm5", norm5)
        self.filter = h.classifier_filter()
        self.classifier = nn.Linear(c, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
            elif isinstance(m, nn.BatchNorm2d) and m.affine:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.features(x))
        out = F.adaptive_avg_pool2d(out, (1, 1)).flatten(1)
        return self.classifier(self.filter(out))


def densenet_tv(growth: int, blocks: tuple[int, ...], init: int):
    def build(num_classes: int, h: Hardening) -> nn.Module:
        return DenseNetTV(growth, blocks, init, num_classes, h)

    return build


# -------------------------------------------------------------------------------- CIFAR-100 / GTSRB layout


class Bottleneck(nn.Module):
    def __init__(self, cin: int, growth: int, h: Hardening):
        super().__init__()
        inner = 4 * growth
        bn1, act1 = h.bn_act(cin)
        bn2, act2 = h.bn_act(inner)
        self.bottle_neck = nn.Sequential(bn1, act1, conv(cin, inner, 1), bn2, act2, conv(inner, growth, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.bottle_neck(x)], 1)


class DownSample(nn.Module):
    def __init__(self, cin: int, cout: int, h: Hardening):
        super().__init__()
        self.down_sample = nn.Sequential(h.bn(cin), conv(cin, cout, 1), nn.AvgPool2d(2, stride=2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_sample(x)


class DenseNetBC(nn.Module):
    def __init__(self, growth: int, blocks: tuple[int, ...], num_classes: int, h: Hardening, reduction=0.5):
        super().__init__()
        c = 2 * growth
        self.conv1 = conv(3, c, 3, 1, 1)
        self.features = nn.Sequential()
        for i, n in enumerate(blocks[:-1]):
            self.features.add_module(f"dense_block_layer_{i}", self._block(c, growth, n, h))
            c += growth * n
            out = int(reduction * c)
            self.features.add_module(f"transition_layer_{i}", DownSample(c, out, h))
            c = out
        self.features.add_module(f"dense_block{len(blocks) - 1}", self._block(c, growth, blocks[-1], h))
        c += growth * blocks[-1]
        bn, act = h.bn_act(c)
        self.features.add_module("bn", bn)
        self.features.add_module("relu", act)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.filter = h.classifier_filter()
        self.linear = nn.Linear(c, num_classes)

    @staticmethod
    def _block(c: int, growth: int, n: int, h: Hardening) -> nn.Sequential:
        block = nn.Sequential()
        for j in range(n):
            block.add_module(f"bottle_neck_layer_{j}", Bottleneck(c + j * growth, growth, h))
        return block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.avgpool(self.features(self.conv1(x))).flatten(1)
        return self.linear(self.filter(out))


def densenet_bc(growth: int, blocks: tuple[int, ...]):
    def build(num_classes: int, h: Hardening) -> nn.Module:
        return DenseNetBC(growth, blocks, num_classes, h)

    return build
