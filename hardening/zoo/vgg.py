"""The suite's VGG-11/13 with batch norm: CIFAR-10 (avg-pool to 1x1, 512-4096-4096 classifier) and GTSRB.

Written against cad-polito-it/dnn-benchmarks torch/gpu/image_classification/{CIFAR10,GTSRB}/fp32/vgg/. Both
number their layers as one ``features`` Sequential (conv, BN, ReLU per convolution, max-pool between stages)
and a ``classifier`` Sequential (Linear, ReLU, Dropout, Linear, ReLU, Dropout, Linear): the convolutions are
``features.0, .4, .8, ...`` and the linear layers ``classifier.0, .3, .6``. The CIFAR-10 variant pools the
1x1 map adaptively; the GTSRB one (50x50 images, five 2x2 max-pools down to 1x1) flattens it directly.
"""

from __future__ import annotations

import torch
from diehardlab.hardening.zoo.common import Hardening, conv
from torch import nn

CFGS = {
    "vgg11_bn": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg13_bn": (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
}


def features(cfg: tuple, h: Hardening) -> nn.Sequential:
    layers: list[nn.Module] = []
    cin = 3
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            continue
        bn, act = h.bn_act(v)
        layers += [conv(cin, v, 3, 1, 1, bias=True), bn, act]
        cin = v
    return nn.Sequential(*layers)


class VGG(nn.Module):
    def __init__(self, cfg: tuple, num_classes: int, h: Hardening, adaptive_pool: bool):
        super().__init__()
        self.features = features(cfg, h)
        # CIFAR-10: an adaptive pool to 1x1 (a no-op on the 1x1 map, kept for the suite's forward)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1)) if adaptive_pool else nn.Identity()
        self.filter = h.classifier_filter()
        self.classifier = nn.Sequential(
            nn.Linear(512, 4096),
            h.act_only(),
            nn.Dropout(),
            nn.Linear(4096, 4096),
            h.act_only(),
            nn.Dropout(),
            nn.Linear(4096, num_classes),
        )
        if adaptive_pool:  # the CIFAR-10 definition's own initialisation (the GTSRB one keeps torch's)
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                    nn.init.zeros_(m.bias)
                elif isinstance(m, nn.Linear):
                    nn.init.normal_(m.weight, 0, 0.01)
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.avgpool(self.features(x)).flatten(1)
        return self.classifier(self.filter(out))


def vgg(name: str, adaptive_pool: bool):
    def build(num_classes: int, h: Hardening) -> nn.Module:
        return VGG(CFGS[name], num_classes, h, adaptive_pool)

    return build
