"""Bit-level operations on float32 tensors (IEEE 754: bit 31 sign, 30..23 exponent, 22..0 mantissa)."""

from __future__ import annotations

import torch

FLOAT_BITS = 32


def bit_mask(bit: int) -> int:
    """The int32 value whose only set bit is ``bit`` (bit 31 is the sign bit, negative in two's complement)."""
    if not 0 <= bit < FLOAT_BITS:
        raise ValueError(f"bit must be in 0..31 for float32, got {bit}")
    return -(1 << 31) if bit == 31 else 1 << bit


def _as_int(x: torch.Tensor) -> torch.Tensor:
    if x.dtype != torch.float32:
        raise TypeError(f"bit faults need float32 tensors, got {x.dtype}")
    return x.view(torch.int32)


def flip(x: torch.Tensor, bit: int) -> torch.Tensor:
    """A copy of ``x`` with ``bit`` inverted in every element."""
    return (_as_int(x) ^ bit_mask(bit)).view(torch.float32)


def set_bit(x: torch.Tensor, bit: int, value: int) -> torch.Tensor:
    """A copy of ``x`` with ``bit`` forced to ``value`` (stuck-at-0 / stuck-at-1) in every element."""
    i = _as_int(x)
    m = bit_mask(bit)
    return ((i | m) if value else (i & ~m)).view(torch.float32)


def get_bit(x: torch.Tensor, bit: int) -> torch.Tensor:
    """0/1 int32 tensor: the value of ``bit`` in every element of ``x``."""
    return (_as_int(x) >> bit) & 1


def apply_model(x: torch.Tensor, model: str, bit: int, value: float | None = None) -> torch.Tensor:
    """The faulty version of ``x`` under a fault model: bitflip, stuck-at-0, stuck-at-1 or value."""
    if model == "bitflip":
        return flip(x, bit)
    if model == "stuck-at-0":
        return set_bit(x, bit, 0)
    if model == "stuck-at-1":
        return set_bit(x, bit, 1)
    if model == "value":
        if value is None:
            raise ValueError("a value fault needs a value")
        return torch.full_like(x, value)
    raise ValueError(f"unknown fault model {model!r} (bitflip, stuck-at-0, stuck-at-1, value)")


def bits_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """True when two tensors are bit-identical (NaNs with equal payloads compare equal, -0.0 != 0.0)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.dtype == torch.float32:
        return torch.equal(a.view(torch.int32), b.view(torch.int32))
    if a.is_floating_point():
        return torch.equal(a.view(torch.uint8), b.view(torch.uint8)) if a.is_contiguous() else torch.equal(a, b)
    return torch.equal(a, b)
