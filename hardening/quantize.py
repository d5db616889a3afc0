"""Post-training static int8 quantization: torch.ao's FX graph mode with the fbgemm (x86) backend.

Written against torch.ao.quantization of torch 2.x (``prepare_fx``/``convert_fx``, ``get_default_qconfig_mapping``).
fbgemm's recipe: weights int8, symmetric, one scale per output channel (zero point 0); activations uint8 (quint8)
with one scale and zero point per tensor, observed by histogram on a calibration set, with the reduced range
0..127 that keeps fbgemm's 16-bit intermediate sums from saturating; batch norm folded into the convolution
before quantization, a following ReLU fused into it; biases stay float32 (fbgemm adds them in float before the
requantization). The result is a ``torch.fx.GraphModule`` whose conv/linear layers keep their names (a fused
``conv+bn+relu`` is the conv's name), so fault lists address them as before.

Why calibrate explicitly: the activation scales are the deployment's; the run records how many and which images
set them (their hash), so the int8 model can be rebuilt bit for bit from the checkpoint.
"""

from __future__ import annotations

import copy
import hashlib
import platform
import warnings
from typing import Any

import torch
from torch import fx, nn

from diehardlab.errors import ConfigError

ENGINE = "fbgemm"


def check_engine() -> None:
    """Refuse a torch (or CPU) without fbgemm's int8 kernels, naming the machine."""
    engines = list(torch.backends.quantized.supported_engines)
    if ENGINE not in engines:
        raise ConfigError(
            f"--quantize int8: this torch has no fbgemm (x86) int8 kernels on {platform.machine()} "
            f"(quantized engines here: {', '.join(engines) or 'none'}); run the int8 emulation instead "
            "(--int8 emulate)"
        )


def quantize_int8(model: nn.Module, calibration: torch.Tensor, batch_size: int = 64) -> fx.GraphModule:
    """The int8 (fbgemm) version of ``model`` (left unchanged), calibrated on ``calibration`` (float32 NCHW)."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    check_engine()
    if calibration.shape[0] < 1:
        raise ConfigError("--quantize int8: the calibration set is empty")
    _check_layers(model)
    torch.backends.quantized.engine = ENGINE
    float_model = copy.deepcopy(model).cpu().eval()
    # torch.ao warns about its own deprecation and observer defaults on every call; the run records what it used
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            prepared = prepare_fx(float_model, get_default_qconfig_mapping(ENGINE), example_inputs=(calibration[:1],))
        except Exception as exc:  # fx raises many types for models it cannot trace
            raise ConfigError(
                f"--quantize int8: torch.fx cannot trace the model ({type(exc).__name__}: {exc}); FX graph-mode "
                "quantization needs a traceable model"
            ) from None
        with torch.no_grad():
            for i in range(0, calibration.shape[0], batch_size):
                prepared(calibration[i : i + batch_size].float())
        try:
            quantized = convert_fx(prepared)
        except (ValueError, RuntimeError, NotImplementedError) as exc:
            raise ConfigError(f"--quantize int8: torch.ao cannot convert the model to int8 ({exc})") from None
    check_quantized(model, quantized)
    return quantized.eval()


def check_quantized(float_model: nn.Module, quantized: nn.Module) -> None:
    """Every conv/linear layer of the float model must have become an int8 layer: a layer torch.ao left in
    float (a layer type or option fbgemm has no int8 kernel for) is named, as the int8 campaign would not be one."""
    from diehardlab.hardening.sfi.targets import FLOAT_LAYERS, is_quantized_layer

    qmods = dict(quantized.named_modules())
    left = []
    for name, mod in float_model.named_modules():
        if not isinstance(mod, FLOAT_LAYERS):
            continue
        q = qmods.get(name)
        if q is None or not is_quantized_layer(q):
            left.append(f"{name} ({type(mod).__name__}{_why(mod)})")
    if left:
        raise ConfigError(
            f"--quantize int8: layer {left[0]} has no int8 (fbgemm) version; torch.ao left it in float32"
            + (
                f", and {len(left) - 1} more: {', '.join(left[1:4])}{' ...' if len(left) > 4 else ''}"
                if left[1:]
                else ""
            )
            + ". Quantize a model whose conv/linear layers fbgemm supports, or run it in float16/bfloat16 (--dtype)"
        )


def _check_layers(model: nn.Module) -> None:
    """Refuse, by name, a conv/linear layer with an option fbgemm's int8 kernels do not have (before torch.ao
    fails on it with a message that names no layer)."""
    from diehardlab.hardening.sfi.targets import FLOAT_LAYERS

    for name, mod in model.named_modules():
        if isinstance(mod, FLOAT_LAYERS) and getattr(mod, "padding_mode", "zeros") != "zeros":
            raise ConfigError(
                f"--quantize int8: layer {name} ({type(mod).__name__}{_why(mod)}) has no int8 (fbgemm) version: "
                "quantized convolutions pad with zeros only. Quantize a model without it, or run it in "
                "float16/bfloat16 (--dtype)"
            )


def _why(mod: nn.Module) -> str:
    pm = getattr(mod, "padding_mode", "zeros")
    if pm != "zeros":
        return f", padding_mode={pm!r}"
    return ""


def calibration_record(x: torch.Tensor, ids: list[str], source: str) -> dict[str, Any]:
    """What the run records of the calibration set: its source, size, image ids (the first ones) and hash."""
    h = hashlib.sha256("\n".join(ids).encode() + x.float().contiguous().numpy().tobytes()).hexdigest()
    return {"source": source, "images": int(x.shape[0]), "first_ids": ids[:5], "sha256": h}


def qparams_record(quantized: nn.Module) -> dict[str, dict[str, Any]]:
    """Per int8 layer: weight dtype and scheme, the range of its weight scales, its output scale and zero point."""
    from diehardlab.hardening.sfi.targets import is_quantized_layer

    out: dict[str, dict[str, Any]] = {}
    for name, mod in quantized.named_modules():
        if not is_quantized_layer(mod) or not hasattr(mod, "weight"):
            continue
        w = mod.weight() if callable(mod.weight) else None
        if w is None or not w.is_quantized:
            continue
        per_channel = w.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric)
        scales = w.q_per_channel_scales() if per_channel else torch.tensor([w.q_scale()])
        out[name] = {
            "weight": f"{str(w.dtype).replace('torch.', '')} {str(w.qscheme()).replace('torch.', '')}",
            "weight_scale_min": float(scales.min()),
            "weight_scale_max": float(scales.max()),
            "output_scale": float(mod.scale),
            "output_zero_point": int(mod.zero_point),
        }
    return out
