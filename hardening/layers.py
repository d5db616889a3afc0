"""Layers shared by diehardlab's own models (``models.py``) and the benchmark suite's zoo (``zoo/``).

The bounded activations and the NaN filter of DieHardNet, built from any config object with the
``ModelConfig`` fields ``activation``, ``act_bound`` and ``nan_filter``, and the option-A residual shortcut.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class BoundedReLU(nn.Module):
    """ReLU6 with a configurable bound."""

    def __init__(self, bound: float = 6.0):
        super().__init__()
        self.bound = float(bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # hardtanh, not clamp: same values, and its CPU kernel is several times faster than clamp's.
        return F.hardtanh(x, 0.0, self.bound)

    def extra_repr(self) -> str:
        return f"bound={self.bound}"


class BoundedGELU(nn.Module):
    """GELU capped from above at ``bound`` (GELU is already bounded below by about -0.17)."""

    def __init__(self, bound: float = 6.0, approximate: str = "none"):
        super().__init__()
        self.bound = float(bound)
        self.approximate = approximate  # GELU's own option ("none" or "tanh"), kept when hardening a GELU net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # GELU is >= -0.17, so a lower limit of -1 changes nothing.
        return F.hardtanh(F.gelu(x, approximate=self.approximate), -1.0, self.bound)

    def extra_repr(self) -> str:
        return f"bound={self.bound}" + (f", approximate={self.approximate}" if self.approximate != "none" else "")


class _StraightThroughNanToZero(torch.autograd.Function):
    """``nan_to_num(x, 0, 0, 0)`` whose gradient passes through unchanged.

    Autograd's own backward of ``nan_to_num`` costs several times its forward on a CPU, and only differs at
    non-finite inputs, where no upstream gradient is meaningful anyway (fault injection blocks its own).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return torch.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad


class NanFilter(nn.Module):
    """Replaces NaN and +/-Inf by 0, so one non-finite value cannot poison every later layer."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _StraightThroughNanToZero.apply(x)


def make_activation(cfg: Any) -> nn.Module:
    """The activation ``cfg`` asks for (a ``ModelConfig`` or any object with its activation fields)."""
    if cfg.activation == "relu":
        act: nn.Module = nn.ReLU()
    elif cfg.activation == "relu6":
        act = BoundedReLU(cfg.act_bound)
    else:
        act = BoundedGELU(cfg.act_bound)
    return nn.Sequential(act, NanFilter()) if cfg.nan_filter else act


class PadShortcut(nn.Module):
    """Option-A shortcut: subsample by the stride and zero-pad the new channels (no parameters)."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.stride = stride
        self.pad_lo = (cout - cin) // 2
        self.pad_hi = cout - cin - self.pad_lo

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad_lo, self.pad_hi))
