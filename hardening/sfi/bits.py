"""Number formats and bit-level faults on the tensors that store them.

A *format* is how one number is stored: its width and what each bit means. Faults address bit ``i`` of the
stored pattern, bit 0 the least significant:

- ``float32``: IEEE 754 binary32, bit 31 sign, 30..23 exponent, 22..0 mantissa;
- ``float16``: IEEE 754 binary16, bit 15 sign, 14..10 exponent, 9..0 mantissa;
- ``bfloat16``: bit 15 sign, 14..7 exponent, 6..0 mantissa (float32's upper half);
- ``int8``: an 8-bit two's complement integer code (bit 7 is the sign: a flip moves the code by 128); the
  weights of an int8-quantized layer, whose scale and zero point are stored apart and left untouched;
- ``uint8``: an unsigned 8-bit code with a zero point, as fbgemm stores a quantized activation (quint8).

Every operation works on the integer view of the stored bits, so a fault is exact in any format (NaN payloads
and -0.0 included). Quantized torch tensors (qint8, quint8) are faulted on their integer codes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Format:
    """One stored number format: width, storage dtype, the integer dtype of its bits, and its fields."""

    name: str
    width: int
    storage: torch.dtype
    view: torch.dtype  # integer dtype of the same width: the bits as they are stored
    sign: int | None  # bit position of the sign, None for unsigned codes
    exponent: tuple[int, int] | None  # (lowest, highest) exponent bit, None for integer codes

    @property
    def is_float(self) -> bool:
        return self.exponent is not None

    def field(self, bit: int) -> str:
        """``sign``, ``exponent``, ``mantissa`` or (integer codes) ``integer`` for a bit position."""
        if self.sign is not None and bit == self.sign and self.is_float:
            return "sign"
        if self.exponent is None:
            return "sign" if bit == self.sign else "integer"
        lo, hi = self.exponent
        return "exponent" if lo <= bit <= hi else "mantissa"

    def describe(self) -> str:
        if not self.is_float:
            kind = "two's complement" if self.sign is not None else "unsigned, with a zero point"
            return f"{self.name}: {self.width}-bit integer code ({kind}), bits 0-{self.width - 1}"
        lo, hi = self.exponent
        return f"{self.name}: bit {self.sign} sign, {hi}..{lo} exponent, {lo - 1}..0 mantissa"


FORMATS: dict[str, Format] = {
    f.name: f
    for f in (
        Format("float32", 32, torch.float32, torch.int32, 31, (23, 30)),
        Format("float16", 16, torch.float16, torch.int16, 15, (10, 14)),
        Format("bfloat16", 16, torch.bfloat16, torch.int16, 15, (7, 14)),
        Format("int8", 8, torch.int8, torch.int8, 7, None),
        Format("uint8", 8, torch.uint8, torch.uint8, None, None),
    )
}
FLOAT_BITS = 32  # float32's width (the default format)
_BY_DTYPE = {f.storage: f for f in FORMATS.values()}
_QUANTIZED = {torch.qint8: "int8", torch.quint8: "uint8"}


def get_format(name: str) -> Format:
    if name not in FORMATS:
        raise ValueError(f"unknown number format {name!r}; one of {', '.join(FORMATS)}")
    return FORMATS[name]


def format_of(x: torch.Tensor | torch.dtype) -> Format:
    """The format of a tensor (or dtype): quantized tensors are their integer codes."""
    dtype = x if isinstance(x, torch.dtype) else x.dtype
    if dtype in _QUANTIZED:
        return FORMATS[_QUANTIZED[dtype]]
    if dtype not in _BY_DTYPE:
        raise TypeError(f"bit faults need a tensor in one of {', '.join(FORMATS)}, got {dtype}")
    return _BY_DTYPE[dtype]


def bit_mask(bit: int, fmt: Format | str = "float32") -> int:
    """The value of the format's integer view whose only set bit is ``bit`` (the top bit of a signed view is
    negative in two's complement)."""
    fmt = get_format(fmt) if isinstance(fmt, str) else fmt
    if not 0 <= bit < fmt.width:
        raise ValueError(f"bit must be in 0..{fmt.width - 1} for {fmt.name}, got {bit}")
    signed = fmt.view != torch.uint8
    return -(1 << bit) if signed and bit == fmt.width - 1 else 1 << bit


def _bits(x: torch.Tensor) -> tuple[torch.Tensor, Format]:
    fmt = format_of(x)
    return x.view(fmt.view), fmt


def flip(x: torch.Tensor, bit: int) -> torch.Tensor:
    """A copy of ``x`` with ``bit`` inverted in every element (``x``'s own format)."""
    i, fmt = _bits(x)
    return (i ^ bit_mask(bit, fmt)).view(x.dtype)


def set_bit(x: torch.Tensor, bit: int, value: int) -> torch.Tensor:
    """A copy of ``x`` with ``bit`` forced to ``value`` (stuck-at-0 / stuck-at-1) in every element."""
    i, fmt = _bits(x)
    m = bit_mask(bit, fmt)
    clear = ~m & 0xFF if fmt.view == torch.uint8 else ~m  # Python's ~ is signed; keep it in uint8's range
    return ((i | m) if value else (i & clear)).view(x.dtype)


def get_bit(x: torch.Tensor, bit: int) -> torch.Tensor:
    """0/1 tensor (the integer view's dtype): the value of ``bit`` in every element of ``x``."""
    i, fmt = _bits(x)
    bit_mask(bit, fmt)  # range check
    return (i >> bit) & 1


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
    """True when two tensors are bit-identical (NaNs with equal payloads compare equal, -0.0 != 0.0).

    Quantized tensors compare their integer codes and quantization parameters."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.is_quantized:
        return a.qscheme() == b.qscheme() and _same_qparams(a, b) and torch.equal(a.int_repr(), b.int_repr())
    if a.dtype in _BY_DTYPE:
        fmt = _BY_DTYPE[a.dtype]
        return torch.equal(a.view(fmt.view), b.view(fmt.view))
    if a.is_floating_point():
        return torch.equal(a.view(torch.uint8), b.view(torch.uint8)) if a.is_contiguous() else torch.equal(a, b)
    return torch.equal(a, b)


def _same_qparams(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.qscheme() in (torch.per_tensor_affine, torch.per_tensor_symmetric):
        return a.q_scale() == b.q_scale() and a.q_zero_point() == b.q_zero_point()
    return (
        torch.equal(a.q_per_channel_scales(), b.q_per_channel_scales())
        and torch.equal(a.q_per_channel_zero_points(), b.q_per_channel_zero_points())
        and a.q_per_channel_axis() == b.q_per_channel_axis()
    )


def same_bits_per_row(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per row of two [N, ...] tensors of one dtype: whether the row is bit-identical (bool [N])."""
    a = a.reshape(a.shape[0], -1)
    b = b.reshape(b.shape[0], -1)
    if a.dtype in _BY_DTYPE:
        view = _BY_DTYPE[a.dtype].view
        return (a.contiguous().view(view) == b.contiguous().view(view)).all(dim=1)
    return (a == b).all(dim=1)
