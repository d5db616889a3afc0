"""The suite's GoogLeNets: CIFAR-10 (torchvision names, a 3x3 192-channel stem) and CIFAR-100 (weiaicunzai).

Written against cad-polito-it/dnn-benchmarks torch/gpu/image_classification/{CIFAR10,CIFAR100}/fp32/googlenet/.
CIFAR-10: ``BasicConv2d`` units (conv without bias, BN with eps 0.001, ReLU), Inception branches
``branch1..branch4``, max-pools ``maxpool3``/``maxpool4``. CIFAR-100: a three-conv ``prelayer``, Inception
branches ``b1..b4`` as Sequentials whose convolutions have biases, one shared ``maxpool``; its 5x5 branch's
middle batch norm is built as ``BatchNorm2d(n5x5, n5x5)`` in the suite, i.e. with eps = n5x5 (32, 96, ...),
which its weights were trained with and which is kept here.
"""

from __future__ import annotations

import torch
from diehardlab.hardening.zoo.common import Hardening, conv
from torch import nn

INCEPTIONS = {  # in, 1x1, 3x3 reduce, 3x3, 5x5 reduce, 5x5, pool proj
    "3a": (192, 64, 96, 128, 16, 32, 32),
    "3b": (256, 128, 128, 192, 32, 96, 64),
    "4a": (480, 192, 96, 208, 16, 48, 64),
    "4b": (512, 160, 112, 224, 24, 64, 64),
    "4c": (512, 128, 128, 256, 24, 64, 64),
    "4d": (512, 112, 144, 288, 32, 64, 64),
    "4e": (528, 256, 160, 320, 32, 128, 128),
    "5a": (832, 256, 160, 320, 32, 128, 128),
    "5b": (832, 384, 192, 384, 48, 128, 128),
}

# -------------------------------------------------------------------------------- CIFAR-10


class BasicConv2d(nn.Module):
    def __init__(self, cin: int, cout: int, k: int, h: Hardening, padding: int = 0):
        super().__init__()
        self.conv = conv(cin, cout, k, 1, padding)
        self.bn, self.relu = h.bn_act(cout, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(x)))


class InceptionTV(nn.Module):
    def __init__(self, cin, c1, c3r, c3, c5r, c5, pp, h: Hardening):
        super().__init__()
        self.branch1 = BasicConv2d(cin, c1, 1, h)
        self.branch2 = nn.Sequential(BasicConv2d(cin, c3r, 1, h), BasicConv2d(c3r, c3, 3, h, padding=1))
        self.branch3 = nn.Sequential(BasicConv2d(cin, c5r, 1, h), BasicConv2d(c5r, c5, 3, h, padding=1))
        self.branch4 = nn.Sequential(
            nn.MaxPool2d(kernel_size=3, stride=1, padding=1, ceil_mode=True), BasicConv2d(cin, pp, 1, h)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)


class GoogLeNetTV(nn.Module):
    def __init__(self, num_classes: int, h: Hardening):
        super().__init__()
        self.conv1 = BasicConv2d(3, 192, 3, h, padding=1)
        for name in ("3a", "3b"):
            setattr(self, f"inception{name}", InceptionTV(*INCEPTIONS[name], h))
        self.maxpool3 = nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=False)
        for name in ("4a", "4b", "4c", "4d", "4e"):
            setattr(self, f"inception{name}", InceptionTV(*INCEPTIONS[name], h))
        self.maxpool4 = nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=False)
        for name in ("5a", "5b"):
            setattr(self, f"inception{name}", InceptionTV(*INCEPTIONS[name], h))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.dropout = nn.Dropout(0.2)
        self.filter = h.classifier_filter()
        self.fc = nn.Linear(1024, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.inception3b(self.inception3a(self.conv1(x)))
        x = self.maxpool3(x)
        for name in ("4a", "4b", "4c", "4d", "4e"):
            x = getattr(self, f"inception{name}")(x)
        x = self.maxpool4(x)
        x = self.inception5b(self.inception5a(x))
        x = self.dropout(self.avgpool(x).flatten(1))
        return self.fc(self.filter(x))


def googlenet_tv(num_classes: int, h: Hardening) -> nn.Module:
    return GoogLeNetTV(num_classes, h)


# -------------------------------------------------------------------------------- CIFAR-100


def _cba(h: Hardening, cin: int, cout: int, k: int, padding: int = 0, bias: bool = True, eps: float = 1e-5):
    bn, act = h.bn_act(cout, eps=eps)
    return [conv(cin, cout, k, 1, padding, bias=bias), bn, act]


class InceptionC100(nn.Module):
    def __init__(self, cin, c1, c3r, c3, c5r, c5, pp, h: Hardening):
        super().__init__()
        self.b1 = nn.Sequential(*_cba(h, cin, c1, 1))
        self.b2 = nn.Sequential(*_cba(h, cin, c3r, 1), *_cba(h, c3r, c3, 3, 1))
        # two stacked 3x3 convs for the 5x5 branch; the first one's BN has eps = c5 (see the module docstring)
        self.b3 = nn.Sequential(*_cba(h, cin, c5r, 1), *_cba(h, c5r, c5, 3, 1, eps=float(c5)), *_cba(h, c5, c5, 3, 1))
        self.b4 = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1), *_cba(h, cin, pp, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b1(x), self.b2(x), self.b3(x), self.b4(x)], dim=1)


class GoogLeNetC100(nn.Module):
    def __init__(self, num_classes: int, h: Hardening):
        super().__init__()
        self.prelayer = nn.Sequential(
            *_cba(h, 3, 64, 3, 1, bias=False), *_cba(h, 64, 64, 3, 1, bias=False), *_cba(h, 64, 192, 3, 1, bias=False)
        )
        self.a3 = InceptionC100(*INCEPTIONS["3a"], h)
        self.b3 = InceptionC100(*INCEPTIONS["3b"], h)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.a4 = InceptionC100(*INCEPTIONS["4a"], h)
        self.b4 = InceptionC100(*INCEPTIONS["4b"], h)
        self.c4 = InceptionC100(*INCEPTIONS["4c"], h)
        self.d4 = InceptionC100(*INCEPTIONS["4d"], h)
        self.e4 = InceptionC100(*INCEPTIONS["4e"], h)
        self.a5 = InceptionC100(*INCEPTIONS["5a"], h)
        self.b5 = InceptionC100(*INCEPTIONS["5b"], h)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.dropout = nn.Dropout2d(p=0.4)
        self.filter = h.classifier_filter()
        self.linear = nn.Linear(1024, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.prelayer(x))
        x = self.maxpool(self.b3(self.a3(x)))
        x = self.maxpool(self.e4(self.d4(self.c4(self.b4(self.a4(x))))))
        x = self.b5(self.a5(x))
        x = self.dropout(self.avgpool(x)).flatten(1)
        return self.linear(self.filter(x))


def googlenet_c100(num_classes: int, h: Hardening) -> nn.Module:
    return GoogLeNetC100(num_classes, h)
