"""What a fault can hit in a model, in the format each tensor is stored in.

A fault addresses a *stored tensor* by name: ``<module>.weight``, ``<module>.bias``, ``<module>.weight_scale``
(the per-channel scales of an int8 layer) or ``<module>.output`` (a layer's output, per image). Each stored
tensor knows its format (``bits.Format``) and how to read and write one element where the model really keeps it:

- float layers (``nn.Conv*``, ``nn.Linear``, in float32, float16 or bfloat16): the parameter itself, in place;
- int8 layers of torch.ao (fbgemm): the packed weight is unpacked, one integer code (or one per-channel scale, or
  one bias value) is changed and the layer is packed again, so the layer's own kernel computes with it;
- int8 layers of the exact emulation (``diehardlab.hardening.int8emu``): their int8 code and scale buffers.

A layer's output is faulted in the format it is stored in: float16 under autocast, the 8-bit code (with its
scale and zero point untouched) of a quantized model's activation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from diehardlab.hardening.sfi.bits import Format, apply_model, format_of, get_format
from torch import nn

FLOAT_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def _ao_types() -> tuple[tuple[type, ...], tuple[type, ...]]:
    """(quantized conv types, quantized linear types) of torch.ao; empty when torch has no torch.ao."""
    try:
        import torch.ao.nn.quantized as nnq
    except ImportError:  # pragma: no cover - every supported torch has it
        return (), ()
    return (nnq.Conv1d, nnq.Conv2d, nnq.Conv3d), (nnq.Linear,)


def layer_kind(mod: nn.Module) -> str | None:
    """``conv`` or ``linear`` for a layer that multiplies-accumulates (float, torch.ao int8, emulated int8)."""
    if isinstance(mod, nn.Linear):
        return "linear"
    if isinstance(mod, FLOAT_LAYERS):
        return "conv"
    kind = getattr(mod, "_diehard_layer_kind", None)
    if kind:
        return kind
    convs, linears = _ao_types()
    if convs and isinstance(mod, convs):
        return "conv"
    if linears and isinstance(mod, linears):
        return "linear"
    return None


def is_quantized_layer(mod: nn.Module) -> bool:
    convs, linears = _ao_types()
    return bool(getattr(mod, "_diehard_layer_kind", None)) or isinstance(mod, convs + linears)


class Stored:
    """One tensor a fault can hit: its name, shape and format; read it whole, read and write one element."""

    name: str
    shape: tuple[int, ...]
    fmt: Format

    def read(self) -> torch.Tensor:
        """The whole tensor as stored (its format's dtype)."""
        raise NotImplementedError

    def element(self, idx: tuple[int, ...]) -> torch.Tensor:
        return self.read()[idx].clone()

    def write(self, idx: tuple[int, ...], value: torch.Tensor) -> None:
        raise NotImplementedError

    def value_scale(self) -> torch.Tensor | None:
        """Per element, the factor that turns a stored code into the number it stands for (int8 weights: the
        channel's scale); None when the stored value is the number."""
        return None


@dataclass
class TensorStored(Stored):
    """A parameter or buffer, written in place (the module computes with it as it is)."""

    name: str
    tensor: torch.Tensor
    scale_of: torch.Tensor | None = None  # per-output-channel scales of int8 codes (emulated layers)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.tensor.shape)

    @property
    def fmt(self) -> Format:
        return format_of(self.tensor)

    def read(self) -> torch.Tensor:
        return self.tensor.detach()

    def write(self, idx: tuple[int, ...], value: torch.Tensor) -> None:
        with torch.no_grad():
            self.tensor[idx] = value

    def value_scale(self) -> torch.Tensor | None:
        if self.scale_of is None:
            return None
        s = self.scale_of.detach().float()
        return s.view(-1, *([1] * (self.tensor.dim() - 1))).expand_as(self.tensor)


class _AoStored(Stored):
    """A part of a torch.ao quantized layer's packed weight: unpacked, changed, packed again."""

    def __init__(self, name: str, mod: nn.Module):
        self.name = name
        self.mod = mod

    def _weight(self) -> torch.Tensor:
        return self.mod.weight()

    def _bias(self) -> torch.Tensor | None:
        return self.mod.bias()

    @staticmethod
    def _requant(codes: torch.Tensor, like: torch.Tensor, scales: torch.Tensor | None = None) -> torch.Tensor:
        if like.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
            s = like.q_per_channel_scales() if scales is None else scales
            return torch._make_per_channel_quantized_tensor(
                codes, s, like.q_per_channel_zero_points(), like.q_per_channel_axis()
            )
        scale = like.q_scale() if scales is None else float(scales.reshape(-1)[0])
        return torch._make_per_tensor_quantized_tensor(codes, scale, like.q_zero_point())

    def _scales(self, w: torch.Tensor) -> torch.Tensor:
        if w.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
            return w.q_per_channel_scales()
        return torch.tensor([w.q_scale()], dtype=torch.float64)


class AoWeight(_AoStored):
    fmt = get_format("int8")

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self._weight().shape)

    def read(self) -> torch.Tensor:
        return self._weight().int_repr()

    def write(self, idx: tuple[int, ...], value: torch.Tensor) -> None:
        w = self._weight()
        codes = w.int_repr().clone()
        codes[idx] = value
        self.mod.set_weight_bias(self._requant(codes, w), self._bias())

    def value_scale(self) -> torch.Tensor:
        w = self._weight()
        s = self._scales(w).float()
        if w.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
            shape = [1] * w.dim()
            shape[w.q_per_channel_axis()] = -1
            return s.view(shape).expand(w.shape)
        return s.expand(w.shape)


class AoScale(_AoStored):
    """The per-channel (or per-tensor) weight scales: float32 values, as fbgemm computes with them (torch keeps
    them in double; a float32 value is exact in double, so the fault is exactly the float32 one)."""

    fmt = get_format("float32")

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self._scales(self._weight()).shape)

    def read(self) -> torch.Tensor:
        return self._scales(self._weight()).float()

    def write(self, idx: tuple[int, ...], value: torch.Tensor) -> None:
        w = self._weight()
        scales = self._scales(w).clone()
        scales[idx] = value.double()
        self.mod.set_weight_bias(self._requant(w.int_repr(), w, scales), self._bias())


class AoBias(_AoStored):
    fmt = get_format("float32")

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self._bias().shape)

    def read(self) -> torch.Tensor:
        return self._bias().detach()

    def write(self, idx: tuple[int, ...], value: torch.Tensor) -> None:
        b = self._bias().detach().clone()
        b[idx] = value
        self.mod.set_weight_bias(self._weight(), b)


def layer_stored(name: str, mod: nn.Module) -> list[Stored]:
    """The stored tensors of one layer: weight, bias and (int8) the weight scales."""
    pre = f"{name}." if name else ""
    own = getattr(mod, "_diehard_stored", None)
    if own is not None:  # emulated int8 layers say which buffers they compute with
        return own(pre)
    convs, linears = _ao_types()
    if isinstance(mod, convs + linears):
        out: list[Stored] = [AoWeight(pre + "weight", mod), AoScale(pre + "weight_scale", mod)]
        if mod.bias() is not None:
            out.append(AoBias(pre + "bias", mod))
        return out
    return [TensorStored(pre + pname, p) for pname, p in mod.named_parameters(recurse=False)]


def stored_tensors(model: nn.Module) -> dict[str, Stored]:
    """Every stored tensor a weight fault can hit: the layers' (``layer_stored``), then any other parameter."""
    out: dict[str, Stored] = {}
    for name, mod in model.named_modules():
        if layer_kind(mod):
            for s in layer_stored(name, mod):
                out[s.name] = s
    for pname, p in model.named_parameters():
        out.setdefault(pname, TensorStored(pname, p))
    return out


def weight_tensors(name: str, mod: nn.Module, target: str) -> list[Stored]:
    """A layer's population for a plan: ``weights`` (float: weight and bias; int8: the weight codes, the bias
    staying a float32 number apart) or ``scales`` (int8: the per-channel weight scales)."""
    stored = layer_stored(name, mod)
    if target == "scales":
        return [s for s in stored if s.name.endswith(".weight_scale") or s.name == "weight_scale"]
    if is_quantized_layer(mod):
        return [s for s in stored if s.name.endswith("weight") and not s.name.endswith("weight_scale")]
    return stored


def numel(shape: tuple[int, ...]) -> int:
    return math.prod(shape)


def fault_activation(value: torch.Tensor, idx: tuple, model: str, bit: int, fault_value: float | None) -> torch.Tensor:
    """A copy of a layer output with the fault applied at ``idx`` in every image, in the output's own format
    (a quantized output's integer code; its scale and zero point unchanged)."""
    full = (slice(None), *idx)
    if value.is_quantized:
        codes = value.int_repr().clone()
        codes[full] = apply_model(codes[full], model, bit, fault_value)
        return torch._make_per_tensor_quantized_tensor(codes, value.q_scale(), value.q_zero_point())
    out = value.clone()
    out[full] = apply_model(out[full], model, bit, fault_value)
    return out


def output_shapes(model: nn.Module, example: torch.Tensor) -> dict[str, tuple[Format, tuple[int, ...]]]:
    """Per conv/linear layer (float or int8): the format and shape (one image) of its output, from one forward
    pass of ``example`` (in the model's input format)."""
    found: dict[str, tuple[Format, tuple[int, ...]]] = {}
    hooks = []
    for name, mod in model.named_modules():
        if layer_kind(mod):

            def hook(_m, _i, out, name=name) -> None:
                found.setdefault(name, (format_of(out), tuple(out.shape[1:])))

            hooks.append(mod.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(example[:1])
    finally:
        for h in hooks:
            h.remove()
    return found
