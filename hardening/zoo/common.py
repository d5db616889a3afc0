"""Building blocks shared by the zoo's families: activations and batch norms that honour the hardening options.

Every zoo model is built from a :class:`~diehardlab.hardening.models.ModelConfig` (or none); with the defaults it is the
suite's network exactly (same module names, parameter and buffer shapes, same forward arithmetic). The
DieHardNet options change it without renaming any parameter, so the suite's weights and fault lists still fit:

- ``activation``/``act_bound``/``nan_filter``: every ReLU becomes the configured activation (a bounded ReLU6 or
  GELU6, followed by a NaN filter when asked); a NaN filter also guards the classifier input.
- ``order = "act-bn"``: wherever a batch norm is followed by its activation, the activation runs *before* the
  batch norm instead (the activation module moves into the batch norm as :class:`PreActBatchNorm2d`'s ``pre``
  and the original place holds an ``Identity``); with ``order_scope = "all"`` every other batch norm also gets
  an activation before it (the second conv of a residual block, a projection shortcut, a transition).
- ``bn_affine``: batch norms with or without their scale and shift (without them the suite's weights do not load).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch
from diehardlab.hardening.layers import NanFilter, make_activation
from torch import nn

# The suite's plain model: what a ModelConfig with its defaults asks for (this module takes any object with
# those fields, so that models.py, which builds zoo models, is not imported here).
PLAIN = SimpleNamespace(
    activation="relu", act_bound=6.0, order="bn-act", order_scope="all", nan_filter=False, bn_affine=True
)


class PreActBatchNorm2d(nn.BatchNorm2d):
    """A batch norm that applies its activation ``pre`` first (DieHardNet order inversion).

    It is a ``BatchNorm2d`` with the same parameters and buffers, so checkpoints and BN recalibration see no
    difference; ``pre`` holds no state.
    """

    def __init__(self, num_features: int, pre: nn.Module, eps: float = 1e-5, affine: bool = True):
        super().__init__(num_features, eps=eps, affine=affine)
        self.pre = pre

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(self.pre(x))


class Hardening:
    """Factory of the activations and batch norms of one model, as ``cfg`` asks (see the module docstring)."""

    def __init__(self, cfg: Any = None):
        self.cfg = cfg or PLAIN

    @property
    def inverted(self) -> bool:
        return self.cfg.order == "act-bn"

    def act(self) -> nn.Module:
        return make_activation(self.cfg)

    def bn(self, c: int, eps: float = 1e-5) -> nn.BatchNorm2d:
        """A batch norm that no activation follows (an activation goes before it under full order inversion)."""
        if self.inverted and self.cfg.order_scope == "all":
            return PreActBatchNorm2d(c, self.act(), eps=eps, affine=self.cfg.bn_affine)
        return nn.BatchNorm2d(c, eps=eps, affine=self.cfg.bn_affine)

    def bn_act(self, c: int, eps: float = 1e-5) -> tuple[nn.BatchNorm2d, nn.Module]:
        """A batch norm and the activation that follows it: (bn, act), or (act then bn, Identity) when inverted."""
        if self.inverted:
            return PreActBatchNorm2d(c, self.act(), eps=eps, affine=self.cfg.bn_affine), nn.Identity()
        return nn.BatchNorm2d(c, eps=eps, affine=self.cfg.bn_affine), self.act()

    def act_only(self) -> nn.Module:
        """An activation that no batch norm precedes (e.g. after a residual sum or in a classifier)."""
        return self.act()

    def classifier_filter(self) -> nn.Module:
        return NanFilter() if self.cfg.nan_filter else nn.Identity()


def conv(cin: int, cout: int, k: int, stride: int = 1, padding: int = 0, bias: bool = False, groups: int = 1):
    return nn.Conv2d(cin, cout, kernel_size=k, stride=stride, padding=padding, bias=bias, groups=groups)
