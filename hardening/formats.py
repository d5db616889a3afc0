"""The number format a model is deployed in, and how a checkpoint gets there (``--dtype``, ``--quantize``).

- ``--dtype float16|bfloat16``: every parameter and buffer converted (``model.to(dtype)``, as ``.half()`` does);
  the input is converted too, every layer computes and stores in that format, the output is in it;
- ``--numerics autocast-fp16|autocast-bf16`` (numerics.py): FP32 storage, 16-bit arithmetic; not a conversion;
- ``--quantize int8``: post-training static quantization (quantize.py: torch.ao, fbgemm, per-channel int8 weights,
  uint8 activations), calibrated on a set of images. On the CPU the campaign runs torch.ao's own int8 kernels
  (``--int8 fbgemm``); elsewhere (CUDA) the exact emulation of those kernels (int8emu.py, ``--int8 emulate``),
  which the tests compare with fbgemm bit for bit.

``deploy`` returns the model to inject into, the dtype its input takes, and the record every result stores
(with the numerics record). A format the device or the model's layers cannot take is refused in one line that
names the layer or the device.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from diehardlab.errors import ConfigError

DTYPES = ("float32", "float16", "bfloat16")
QUANTIZE = ("int8",)
INT8_MODES = ("auto", "fbgemm", "emulate")


@dataclass
class Deployment:
    model: nn.Module
    input_dtype: torch.dtype | None  # None: float32 in
    record: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.record["format"]


def _first_failing_layer(model: nn.Module, example: torch.Tensor) -> tuple[str | None, BaseException | None]:
    """Run one example; on an error, the name of the innermost module that was running and the error."""
    stack: list[str] = []
    failed: list[str] = []
    hooks = []
    for name, mod in model.named_modules():
        if name and not list(mod.children()):

            def pre(_m, _i, name=name) -> None:
                stack.append(name)

            def post(_m, _i, _o) -> None:
                stack.pop()

            hooks += [mod.register_forward_pre_hook(pre), mod.register_forward_hook(post)]
    try:
        with torch.no_grad():
            model(example)
        return None, None
    except (RuntimeError, NotImplementedError, TypeError) as exc:
        failed.extend(stack[-1:])
        return (failed[0] if failed else None), exc
    finally:
        for h in hooks:
            h.remove()


def check_runs(model: nn.Module, example: torch.Tensor, what: str, device: str) -> None:
    """Refuse a model that cannot compute in its format on ``device``, naming the layer (or the device)."""
    if str(device).startswith("cuda") and example.dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"{what}: {torch.cuda.get_device_name(device)} ({device}) has no bfloat16 arithmetic")
    layer, exc = _first_failing_layer(model, example)
    if exc is None:
        return
    mod = dict(model.named_modules()).get(layer) if layer else None
    where = f"layer {layer} ({type(mod).__name__})" if layer else "the model"
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    raise ConfigError(f"{what}: {where} cannot compute on {device} in this format ({msg})")


def deploy(
    model: nn.Module,
    dtype: str = "float32",
    quantize: str | None = None,
    calibration: torch.Tensor | None = None,
    device: str = "cpu",
    int8: str = "auto",
    numerics: str = "fp32",
    calibration_record: dict[str, Any] | None = None,
) -> Deployment:
    """The model in the number format asked for (a new model; ``model`` is left as it is), checked to run on
    ``device`` (see the module docstring)."""
    if dtype not in DTYPES:
        raise ConfigError(f"--dtype: {dtype!r} is not one of {', '.join(DTYPES)}")
    if quantize is not None and quantize not in QUANTIZE:
        raise ConfigError(f"--quantize: {quantize!r} is not one of {', '.join(QUANTIZE)}")
    if int8 not in INT8_MODES:
        raise ConfigError(f"--int8: {int8!r} is not one of {', '.join(INT8_MODES)}")
    if numerics != "fp32" and (dtype != "float32" or quantize):
        raise ConfigError(
            f"--numerics {numerics} is the arithmetic of an FP32 model; it does not combine with "
            f"{'--quantize ' + quantize if quantize else '--dtype ' + dtype} (give one of them)"
        )
    if quantize and dtype != "float32":
        raise ConfigError(f"--quantize {quantize} starts from the FP32 checkpoint; it does not combine with --dtype")
    if quantize:
        return _int8(model, calibration, device, int8, calibration_record or {})
    example_shape = None if calibration is None else calibration[:1]
    if dtype == "float32":
        return Deployment(model, None, {"format": "float32", "dtype": "float32"})
    t = getattr(torch, dtype)
    converted = copy.deepcopy(model).to(device=device, dtype=t).eval()  # the float32 model stays (plans read it)
    if example_shape is not None:
        check_runs(converted, example_shape.to(device, t), f"--dtype {dtype}", device)
    return Deployment(converted, t, {"format": dtype, "dtype": dtype, "how": f"model.to({dtype}), input in {dtype}"})


def _int8(model: nn.Module, calibration: torch.Tensor | None, device: str, mode: str, cal: dict) -> Deployment:
    from diehardlab.hardening.quantize import ENGINE, qparams_record, quantize_int8

    if calibration is None or calibration.shape[0] < 1:
        raise ConfigError("--quantize int8: no calibration images (give --calibration N >= 1)")
    on_cpu = not str(device).startswith("cuda")
    if mode == "fbgemm" and not on_cpu:
        raise ConfigError(
            f"--int8 fbgemm: torch.ao's int8 kernels run on the CPU only, not on {device}; use --int8 emulate "
            "(the exact emulation of those kernels) or --device cpu"
        )
    emulate = mode == "emulate" or (mode == "auto" and not on_cpu)
    q = quantize_int8(model.cpu(), calibration.cpu())
    record: dict[str, Any] = {
        "format": "int8",
        "quantize": "int8",
        "scheme": f"torch.ao FX static PTQ, {ENGINE} qconfig (per-channel symmetric int8 weights, per-tensor uint8 "
        "activations, histogram observers)",
        "calibration": cal,
        "layers": qparams_record(q),
        "kernels": "emulated fbgemm (diehardlab.hardening.int8emu)" if emulate else f"torch.ao {ENGINE} (CPU)",
    }
    if emulate:
        from diehardlab.hardening.int8emu import emulate_int8

        q = emulate_int8(q, calibration[:1].cpu()).to(device)
    check_runs(q, calibration[:1].to(device), "--quantize int8", device)
    return Deployment(q, None, record)
