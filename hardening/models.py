"""CIFAR-style ResNets and a small net, with the DieHardNet hardening options as independent switches.

Options (``ModelConfig``), each one changes exactly one thing:

- ``activation``: ``relu``, ``relu6`` (``clamp(x, 0, act_bound)``) or ``gelu6`` (``min(gelu(x), act_bound)``).
  A bounded activation caps how far a corrupted value can travel through the net.
- ``order``: ``bn-act`` (standard: conv -> BN -> activation) or ``act-bn`` (order inversion: conv ->
  activation -> BN), so a corrupted conv output is bounded before BN rescales it.
  ``order_scope="all"`` inverts every conv of the trunk (the second conv of each block gets an activation before
  its BN, as the residual sum keeps its own activation); ``order_scope="reference"`` inverts only the stem and
  the first conv of each block, which is what the reference DieHardNet code did.
- ``nan_filter``: a filter after every activation and before the classifier that replaces NaN and +/-Inf by 0.
- ``bn_affine``: BatchNorm with or without the learned scale and shift.

Architectures: the benchmark suite's 16 models by their zoo name (``cifar10/resnet20``, ``gtsrb/vgg11_bn``:
``diehardlab.hardening.zoo``, which applies activation, order, NaN filter and BN options without renaming a
parameter; ``shortcut``, ``width`` and ``stem_stride`` are the suite's own there); ``resnet20/32/44/56`` (BasicBlocks,
``width``/2x/4x channels, Kaiming init) with the shortcut
``conv`` (1x1 conv + BN where the shape changes, as the DieHardNet code) or ``pad`` (parameter-free subsample +
zero channel padding: ResNet-20 then has 19 convs and 1 linear layer); ``smallnet`` (stem + two blocks) for
8x8 and 28x28 images.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

import torch
from diehardlab.hardening.layers import (  # noqa: F401  (re-exported: they are part of this module's API)
    BoundedGELU,
    BoundedReLU,
    NanFilter,
    PadShortcut,
    make_activation,
)
from pydantic import ConfigDict, TypeAdapter, ValidationError
from torch import nn

from diehardlab.config import format_validation_error
from diehardlab.errors import ConfigError

C = TypeVar("C")

ARCHS = ("resnet20", "resnet32", "resnet44", "resnet56", "smallnet")
CHOICES: dict[str, tuple[str, ...]] = {
    "arch": ARCHS,
    "shortcut": ("conv", "pad"),
    "activation": ("relu", "relu6", "gelu6"),
    "order": ("bn-act", "act-bn"),
    "order_scope": ("all", "reference"),
}


def is_zoo_arch(arch: str) -> bool:
    """``<dataset>/<arch>`` names a model of the benchmark suite's zoo (``diehardlab.hardening.zoo``)."""
    return "/" in str(arch)


@functools.cache
def _adapter(cls: type) -> TypeAdapter:
    return TypeAdapter(cls)


def config_from_dict(cls: type[C], data: Any, source: str) -> C:
    """A config dataclass (``extra="forbid"``) from a parsed TOML/JSON table, type-checked by pydantic.

    Errors read as every other configuration error of the project (``diehardlab.config``): the source, the
    path of the field, and what is wrong; the dataclass's own checks (``__post_init__``) are prefixed alike.
    """
    _refuse_booleans_as_numbers(cls, data, source)
    try:
        return _adapter(cls).validate_python(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, data, source)) from None
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def _refuse_booleans_as_numbers(cls: type, data: Any, source: str, loc: tuple[str, ...] = ()) -> None:
    """pydantic reads ``epochs = true`` as 1: in a config file that is a typo, not a number."""
    if not (dataclasses.is_dataclass(cls) and isinstance(data, dict)):
        return
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        value, kind = data.get(f.name), hints.get(f.name)
        if isinstance(value, bool) and kind in (int, float):
            where = " -> ".join((*loc, f.name))
            raise ConfigError(f"{source}: {where}: a number is expected, not {str(value).lower()}")
        _refuse_booleans_as_numbers(kind, value, source, (*loc, f.name))


@dataclass
class ModelConfig:
    # Read by pydantic when validating a table into this dataclass: a misspelt key is an error, inf/nan too.
    __pydantic_config__ = ConfigDict(extra="forbid", allow_inf_nan=False)

    arch: str = "resnet20"
    shortcut: str = "conv"
    activation: str = "relu"
    act_bound: float = 6.0
    order: str = "bn-act"
    order_scope: str = "all"
    nan_filter: bool = False
    bn_affine: bool = True
    width: int = 16
    # Stride of the first conv; 2 makes a 28x28 smallnet four times cheaper (the fashion-mnist configs).
    stem_stride: int = 1

    def __post_init__(self) -> None:
        if is_zoo_arch(self.arch):
            from diehardlab.hardening.zoo import entry

            entry(self.arch)  # a ConfigError that lists the zoo when the name is unknown
        for name, allowed in CHOICES.items():
            value = getattr(self, name)
            if name == "arch" and is_zoo_arch(value):
                continue
            if value not in allowed:
                raise ConfigError(f"model -> {name}: {value!r} is not one of {', '.join(allowed)}")
        if not self.act_bound > 0:
            raise ConfigError(f"model -> act_bound: must be > 0 (got {self.act_bound!r})")
        if int(self.width) < 1 or int(self.stem_stride) not in (1, 2):
            raise ConfigError(
                "model -> width / stem_stride: need width >= 1 and stem_stride 1 or 2 "
                f"(got {self.width}, {self.stem_stride})"
            )

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "model") -> ModelConfig:
        return config_from_dict(cls, data, source)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


class ConvUnit(nn.Module):
    """conv -> BN -> act, or conv -> act -> BN when ``invert``; ``act=False`` leaves the activation out."""

    def __init__(self, cin: int, cout: int, stride: int, cfg: ModelConfig, invert: bool, act: bool = True):
        super().__init__()
        self.conv = conv3x3(cin, cout, stride)
        self.invert = invert
        self.bn = nn.BatchNorm2d(cout, affine=cfg.bn_affine)
        self.act = make_activation(cfg) if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.invert:
            return self.bn(self.act(x))
        return self.act(self.bn(x))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, cfg: ModelConfig):
        super().__init__()
        inverted = cfg.order == "act-bn"
        self.unit1 = ConvUnit(cin, cout, stride, cfg, invert=inverted)
        # The second conv has no activation of its own in a standard block (it comes after the sum);
        # full order inversion gives it one before its BN.
        invert2 = inverted and cfg.order_scope == "all"
        self.unit2 = ConvUnit(cout, cout, 1, cfg, invert=invert2, act=invert2)
        if stride == 1 and cin == cout:
            self.shortcut: nn.Module = nn.Identity()
        elif cfg.shortcut == "conv":
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout, affine=cfg.bn_affine)
            )
        else:
            self.shortcut = PadShortcut(cin, cout, stride)
        self.act = make_activation(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.unit2(self.unit1(x))
        return self.act(out + self.shortcut(x))


class ResNet(nn.Module):
    """Stem conv, stages of BasicBlocks (``width``, 2x, 4x channels; stride 2 between stages), pool, linear."""

    def __init__(self, cfg: ModelConfig, in_channels: int, num_classes: int, blocks_per_stage: tuple[int, ...]):
        super().__init__()
        w = int(cfg.width)
        self.stem = ConvUnit(in_channels, w, cfg.stem_stride, cfg, invert=cfg.order == "act-bn")
        layers: list[nn.Module] = []
        cin = w
        for i, n in enumerate(blocks_per_stage):
            cout = w * 2**i
            for j in range(n):
                layers.append(BasicBlock(cin, cout, 2 if (i > 0 and j == 0) else 1, cfg))
                cin = cout
        self.blocks = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.filter = NanFilter() if cfg.nan_filter else nn.Identity()
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                nn.init.kaiming_normal_(m.weight, mode="fan_out" if isinstance(m, nn.Conv2d) else "fan_in")
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.blocks(self.stem(x))).flatten(1)
        return self.fc(self.filter(x))


def build_model(cfg: ModelConfig, in_channels: int, num_classes: int) -> nn.Module:
    """The network ``cfg`` describes for ``in_channels``-channel images and ``num_classes`` classes."""
    if is_zoo_arch(cfg.arch):
        from diehardlab.hardening.zoo import build

        if in_channels != 3:
            raise ConfigError(f"model -> arch: {cfg.arch} takes 3-channel images, not {in_channels}")
        return build(cfg.arch, cfg, num_classes)
    if cfg.arch == "smallnet":
        return ResNet(cfg, in_channels, num_classes, (1, 1))
    depth = int(cfg.arch.removeprefix("resnet"))
    n = (depth - 2) // 6
    return ResNet(cfg, in_channels, num_classes, (n, n, n))


def conv_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The fault-injection targets: every ``Conv2d`` with its qualified name, in forward order."""
    # Modules register in the order their forward uses them (stem, then per block conv1, conv2, shortcut).
    return [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
