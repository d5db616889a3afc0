"""The arithmetic each layer computes in: an explicit, per-layer policy, applied to a model and recorded.

Why: the same weights and the same fault give different outcomes in different arithmetic. On an Ampere or
later GPU, PyTorch lets cuDNN run FP32 convolutions on the tensor cores in TF32 (10 mantissa bits), and cuDNN
picks those kernels per layer; a flip of a low mantissa bit of a weight, which TF32 rounds away, is then masked
on every image, while in strict FP32 it changes the scores. A fault-injection campaign must say which
arithmetic it ran in, layer by layer, and a laptop must be able to compute as the GPU did.

A *policy* maps module names to an *arithmetic* (first matching pattern wins):

- ``fp32``: IEEE single precision. On CUDA, TF32 is turned off for this layer's convolution and matmul.
- ``tf32``: the tensor-core format. On CUDA, cuDNN/cuBLAS are allowed TF32 for this layer (they still choose
  their kernels; :func:`cuda_kernels` lists what ran). Elsewhere it is emulated as the tensor cores compute it:
  inputs and weights rounded to 10 mantissa bits (round to nearest, ties to even), products accumulated in
  FP32, the bias added in FP32.

The policy acts on convolution and linear modules only (the layers that multiply-accumulate); everything else
runs as it is. Applying a policy replaces those modules' ``forward`` by :func:`layer_forward`, which the fault
injector also calls for its one-channel shortcut, so every path computes in the mapped arithmetic.

- ``autocast-fp16`` / ``autocast-bf16``: FP32 weights, the layer computed as ``torch.autocast`` runs it: input
  and weight cast to float16 (bfloat16), products accumulated in FP32, the result stored in the 16-bit format
  (so the activations between layers, and the model's output, are 16-bit). On CUDA the layer runs under
  ``torch.autocast``; elsewhere it is emulated: operands rounded to the 16-bit format (their products are exact in
  FP32), the convolution or matmul in FP32, the result rounded to 16 bits, and the bias added as PyTorch's CUDA
  kernels add it (a convolution's in a separate 16-bit add, a linear layer's inside the matmul epilogue, before
  the one rounding). A weight fault is then a fault in the FP32 storage whose effect passes through the 16-bit
  arithmetic.

Extending: an arithmetic is an :class:`Arithmetic` (how an operand enters the multiply, how the result leaves,
which CUDA flags it needs) registered in :data:`ARITHMETICS`; reduced-precision formats add their own.
"""

from __future__ import annotations

import contextlib
import fnmatch
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from diehardlab.errors import ConfigError

# --------------------------------------------------------------------------------------------- bit-level rounding

TF32_MANTISSA_BITS = 10
_DROP = 23 - TF32_MANTISSA_BITS  # low mantissa bits of a float32 that TF32 does not keep


def round_mantissa(x: torch.Tensor, keep: int) -> torch.Tensor:
    """``x`` (float32) rounded to ``keep`` mantissa bits, to nearest with ties to even; inf and NaN unchanged.

    Works on the bit pattern: add half a unit of the last kept place (minus one when the kept part is even, so a
    tie rounds to the even neighbour) and clear the dropped bits. A carry into the exponent is the correct
    rounding up to the next binade (and to infinity above the largest finite value). On the signed int32
    pattern this is exact for both signs: a finite magnitude is at most 0x7F7FFFFF, so adding less than
    2**drop never reaches the sign bit.
    """
    if x.dtype != torch.float32:
        raise TypeError(f"mantissa rounding needs float32, got {x.dtype}")
    drop = 23 - keep
    if drop <= 0:
        return x
    i = x.contiguous().view(torch.int32)
    r = (i >> drop) & 1  # the last kept bit: 1 when the kept part is odd
    r += (1 << (drop - 1)) - 1
    r += i
    r &= -(1 << drop)
    out = r.view(torch.float32)
    # NaN payloads in the dropped bits must not round to infinity
    return torch.where(torch.isnan(x), x, out).view_as(x)


def round_tf32(x: torch.Tensor) -> torch.Tensor:
    """``x`` as a TF32 value (1 sign, 8 exponent, 10 mantissa bits), stored in float32."""
    return round_mantissa(x, TF32_MANTISSA_BITS)


# --------------------------------------------------------------------------------------------- arithmetics


@dataclass(frozen=True)
class Arithmetic:
    """How a multiply-accumulate layer computes: what its operands and result become, and its CUDA flags."""

    name: str
    description: str
    cuda_tf32: bool = False  # let cuDNN/cuBLAS use TF32 tensor cores for this layer on CUDA

    def operand(self, t: torch.Tensor) -> torch.Tensor:
        """An input or weight as it enters the products (emulated arithmetic); identity for FP32."""
        return t

    def result(self, t: torch.Tensor) -> torch.Tensor:
        """The layer's output as it leaves (accumulation format to storage format); identity for FP32/TF32."""
        return t

    def emulate(self, mod: nn.Module, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        """The layer off CUDA, ``w`` already :meth:`operand`-ed: products and sums in FP32, the bias in FP32."""
        return self.result(_conv_nd(mod, self.operand(_match(x, w)), w, b))


@dataclass(frozen=True)
class TF32(Arithmetic):
    def operand(self, t: torch.Tensor) -> torch.Tensor:
        return round_tf32(t) if t.dtype == torch.float32 else t


@dataclass(frozen=True)
class Autocast(Arithmetic):
    """``torch.autocast`` to a 16-bit float: FP32 weights, 16-bit operands, FP32 accumulation, 16-bit result."""

    half: torch.dtype = torch.float16

    def operand(self, t: torch.Tensor) -> torch.Tensor:
        # the value the 16-bit operand holds, in FP32: the product of two such values is exact in FP32
        return t.to(self.half).float() if t.is_floating_point() else t

    def result(self, t: torch.Tensor) -> torch.Tensor:
        return t.to(self.half)

    def emulate(self, mod: nn.Module, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        b16 = b.to(self.half) if b is not None else None
        xo = self.operand(x)
        if isinstance(mod, nn.Linear):
            # cuBLASLt's bias epilogue: the bias joins the FP32 accumulator, then one rounding
            y = F.linear(xo, w)
            return self.result(y + b16.float() if b16 is not None else y)
        # cuDNN convolves, then PyTorch adds the bias in a separate elementwise kernel in the 16-bit format
        y = self.result(mod._conv_forward(xo, w, None))
        return y + b16.view(1, -1, *([1] * (y.dim() - 2))) if b16 is not None else y


def _match(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """An FP32 layer fed a 16-bit activation (a per-layer map mixing autocast and FP32) computes it in FP32."""
    if x.dtype != w.dtype and x.is_floating_point() and w.is_floating_point():
        return x.to(w.dtype)
    return x


FP32_ARITH = Arithmetic("fp32", "IEEE float32 products and sums (TF32 off on CUDA)")
TF32_ARITH = TF32(
    "tf32",
    "TF32 products (operands rounded to 10 mantissa bits, nearest even), FP32 accumulation and bias",
    cuda_tf32=True,
)
AUTOCAST_FP16 = Autocast(
    "autocast-fp16",
    "torch.autocast float16: FP32 weights, float16 operands, FP32 accumulation, float16 result",
    half=torch.float16,
)
AUTOCAST_BF16 = Autocast(
    "autocast-bf16",
    "torch.autocast bfloat16: FP32 weights, bfloat16 operands, FP32 accumulation, bfloat16 result",
    half=torch.bfloat16,
)
ARITHMETICS: dict[str, Arithmetic] = {a.name: a for a in (FP32_ARITH, TF32_ARITH, AUTOCAST_FP16, AUTOCAST_BF16)}

LAYER_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def get_arithmetic(name: str, where: str) -> Arithmetic:
    if name not in ARITHMETICS:
        raise ConfigError(f"{where}: unknown arithmetic {name!r}; choose one of {', '.join(ARITHMETICS)}")
    return ARITHMETICS[name]


# --------------------------------------------------------------------------------------------- the policy


@dataclass
class NumericsPolicy:
    """Module-name patterns (``fnmatch``: ``layer3.*``, ``linear``, ``*``) to arithmetics; first match wins.

    ``source`` is what the user gave (``fp32``, ``tf32``, an inline map or a TOML file) and is recorded.
    """

    rules: list[tuple[str, str]]
    source: str = "fp32"
    default: str = "fp32"  # for layers no rule matches

    def __post_init__(self) -> None:
        for pattern, arith in self.rules:
            get_arithmetic(arith, f"--numerics {self.source}: {pattern!r}")
        get_arithmetic(self.default, f"--numerics {self.source}: default")

    def arithmetic_for(self, module: str) -> str:
        for pattern, arith in self.rules:
            if fnmatch.fnmatchcase(module, pattern):
                return arith
        return self.default

    def layer_map(self, model: nn.Module) -> dict[str, str]:
        """The arithmetic of every convolution and linear module of ``model``, in registration order."""
        return {n: self.arithmetic_for(n) for n, m in model.named_modules() if isinstance(m, LAYER_TYPES)}

    @property
    def uniform(self) -> str | None:
        """The arithmetic when the policy maps every layer to the same one, else None."""
        names = {a for _, a in self.rules} | {self.default}
        return next(iter(names)) if len(names) == 1 else None

    def check(self, model: nn.Module) -> None:
        """Refuse a pattern that names no layer of the model (a typo would silently leave it in FP32)."""
        layers = [n for n, m in model.named_modules() if isinstance(m, LAYER_TYPES)]
        for pattern, _ in self.rules:
            if not any(fnmatch.fnmatchcase(n, pattern) for n in layers):
                raise ConfigError(
                    f"--numerics {self.source}: pattern {pattern!r} matches no convolution or linear layer of the "
                    f"model (it has {', '.join(layers[:4])}{' ...' if len(layers) > 4 else ''})"
                )

    def spec(self) -> str:
        """The policy as one inline string (``PATTERN=ARITH,...``), accepted back by :func:`parse_numerics`."""
        if not self.rules:
            return self.default
        return ",".join(f"{p}={a}" for p, a in [*self.rules, ("*", self.default)])

    def to_json(self) -> dict[str, Any]:
        return {"source": self.source, "rules": [list(r) for r in self.rules], "default": self.default}

    def to_toml(self) -> str:
        lines = [
            f"# diehardlab numerics map: module-name patterns -> arithmetic ({', '.join(ARITHMETICS)}); the first "
            "match wins.",
            f'default = "{self.default}"',
            "",
            "[layers]",
        ]
        lines += [f'"{p}" = "{a}"' for p, a in self.rules]
        return "\n".join(lines) + "\n"


_INLINE = re.compile(r"^\s*([^=,;\s]+)\s*=\s*([A-Za-z0-9_]+)\s*$")


def parse_numerics(text: str | None) -> NumericsPolicy:
    """``--numerics``: ``fp32`` (default), ``tf32``, an inline map ``"layer3.*=tf32,*=fp32"`` or a TOML file."""
    if text is None or text == "":
        return NumericsPolicy([], "fp32", "fp32")
    text = str(text).strip()
    if text in ARITHMETICS:
        return NumericsPolicy([], text, text)
    if "=" in text:
        rules = []
        for part in re.split(r"[,;]", text):
            if not part.strip():
                continue
            m = _INLINE.match(part)
            if not m:
                raise ConfigError(f"--numerics: {part.strip()!r} is not PATTERN=ARITHMETIC (e.g. 'layer3.*=tf32')")
            rules.append((m.group(1), m.group(2)))
        return _policy(rules, text, "fp32")
    path = Path(text)
    if not path.exists():
        raise ConfigError(
            f"--numerics: {text!r} is neither an arithmetic ({', '.join(ARITHMETICS)}), an inline map "
            "('layer3.*=tf32,*=fp32') nor an existing TOML file"
        )
    return read_numerics_file(path)


def read_numerics_file(path: Path) -> NumericsPolicy:
    """A TOML map: optional ``default = "fp32"`` and a ``[layers]`` table of pattern = arithmetic (in order)."""
    from diehardlab.config import read_toml

    try:
        data = read_toml(path)
    except (OSError, UnicodeDecodeError, ValueError, ConfigError) as exc:
        raise ConfigError(f"--numerics {path}: not a readable TOML map ({exc})") from None
    unknown = sorted(set(data) - {"default", "layers"})
    if unknown:
        raise ConfigError(f"--numerics {path}: unknown key(s) {', '.join(unknown)} (expected default and [layers])")
    layers = data.get("layers", {})
    if not isinstance(layers, dict) or not all(isinstance(v, str) for v in layers.values()):
        raise ConfigError(
            f"--numerics {path}: [layers] must map module-name patterns to one of {', '.join(ARITHMETICS)}"
        )
    default = data.get("default", "fp32")
    if not isinstance(default, str):
        raise ConfigError(f"--numerics {path}: default must be one of {', '.join(ARITHMETICS)}")
    return _policy(list(layers.items()), str(path), default)


def _policy(rules: list[tuple[str, str]], source: str, default: str) -> NumericsPolicy:
    # A trailing catch-all is the default; it keeps the inline and file forms equivalent.
    if rules and rules[-1][0] == "*":
        default = rules[-1][1]
        rules = rules[:-1]
    return NumericsPolicy(rules, source, default)


def policy_from_map(layer_map: dict[str, str], source: str) -> NumericsPolicy:
    """The shortest policy for a per-layer map: one pattern per module-name prefix whose layers all agree.

    The most common arithmetic becomes the default; the others are covered by the widest dotted prefixes
    (``layer3.*``) whose every layer is in that arithmetic, else by exact names.
    """
    if not layer_map:
        return NumericsPolicy([], source, "fp32")
    counts: dict[str, int] = {}
    for a in layer_map.values():
        counts[a] = counts.get(a, 0) + 1
    default = max(counts, key=lambda a: (counts[a], a == "fp32"))
    rules: list[tuple[str, str]] = []
    covered: set[str] = set()
    for name, arith in layer_map.items():
        if arith == default or name in covered:
            continue
        parts = name.split(".")
        chosen = name
        for k in range(1, len(parts)):
            prefix = ".".join(parts[:k]) + "."
            members = [n for n in layer_map if n.startswith(prefix)]
            if members and all(layer_map[n] == arith for n in members):
                chosen = prefix + "*"
                covered.update(members)
                break
        covered.add(name)
        rules.append((chosen, arith))
    return NumericsPolicy(rules, source, default)


# --------------------------------------------------------------------------------------------- applying it


def _cuda_flags(tf32: bool) -> contextlib.AbstractContextManager:
    """TF32 allowed or forbidden for the convolutions and matmuls inside the block (CUDA reads them per call)."""
    return _BackendFlags(tf32)


class _BackendFlags:
    def __init__(self, tf32: bool):
        self.tf32 = tf32
        self.saved: tuple[Any, ...] | None = None

    def __enter__(self):
        self.saved = read_backend_flags_raw()
        set_backend_tf32(self.tf32)
        return self

    def __exit__(self, *exc):
        restore_backend_flags_raw(self.saved)
        return False


def _new_api() -> bool:
    conv = getattr(torch.backends.cudnn, "conv", None)
    return conv is not None and hasattr(conv, "fp32_precision")


def read_backend_flags_raw() -> tuple[Any, ...]:
    if _new_api():
        return ("new", torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision)
    return ("old", torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)


def restore_backend_flags_raw(saved: tuple[Any, ...] | None) -> None:
    if saved is None:
        return
    if saved[0] == "new":
        torch.backends.cudnn.conv.fp32_precision = saved[1]
        torch.backends.cuda.matmul.fp32_precision = saved[2]
    else:
        torch.backends.cudnn.allow_tf32 = saved[1]
        torch.backends.cuda.matmul.allow_tf32 = saved[2]


def set_backend_tf32(tf32: bool) -> None:
    """Allow (or forbid) TF32 for cuDNN convolutions and cuBLAS matmuls, with the API this torch has."""
    if _new_api():
        value = "tf32" if tf32 else "ieee"
        torch.backends.cudnn.conv.fp32_precision = value
        torch.backends.cuda.matmul.fp32_precision = value
    else:
        torch.backends.cudnn.allow_tf32 = tf32
        torch.backends.cuda.matmul.allow_tf32 = tf32


def _precision(path: str) -> str | None:
    """``fp32_precision`` of ``torch.backends.<path>``, or None when this torch has no such setting."""
    obj: Any = torch.backends
    for part in path.split(".") if path else []:
        obj = getattr(obj, part, None)
    value = getattr(obj, "fp32_precision", None) if obj is not None else None
    return str(value) if value is not None else None


def _resolved(*paths: str) -> bool:
    """Whether TF32 is allowed: the first setting of ``paths`` (child first) that is not "none" says."""
    for path in paths:
        value = _precision(path)
        if value not in (None, "none"):
            return value == "tf32"
    return False


def backend_flags() -> dict[str, Any]:
    """The torch settings that decide FP32 arithmetic, as recorded with every result.

    ``conv_tf32``/``matmul_tf32`` say whether cuDNN convolutions / cuBLAS matmuls may use TF32 on a GPU. Torch
    2.9 and later have per-backend ``fp32_precision`` settings (reading the legacy ``allow_tf32`` flags raises
    once the new ones were set), older ones the ``allow_tf32`` flags; whichever this torch has is recorded.
    """
    flags: dict[str, Any] = {}
    if _new_api():
        for path in ("", "cuda.matmul", "cudnn", "cudnn.conv", "mkldnn", "mkldnn.conv", "mkldnn.matmul"):
            value = _precision(path)
            if value is not None:
                flags[f"{path or 'backends'}.fp32_precision"] = value
        flags["conv_tf32"] = _resolved("cudnn.conv", "cudnn", "")
        flags["matmul_tf32"] = _resolved("cuda.matmul", "cuda", "")
    else:
        flags["cudnn.allow_tf32"] = bool(torch.backends.cudnn.allow_tf32)
        flags["cuda.matmul.allow_tf32"] = bool(torch.backends.cuda.matmul.allow_tf32)
        flags["conv_tf32"] = flags["cudnn.allow_tf32"]
        flags["matmul_tf32"] = flags["cuda.matmul.allow_tf32"]
    if not _new_api():  # with the per-backend settings in use, torch refuses to read this global one
        flags["float32_matmul_precision"] = torch.get_float32_matmul_precision()
    flags["cudnn.deterministic"] = bool(torch.backends.cudnn.deterministic)
    flags["cudnn.benchmark"] = bool(torch.backends.cudnn.benchmark)
    return flags


def _cpu_ieee() -> None:
    """oneDNN may run FP32 convolutions and matmuls in reduced precision when told to (AMX machines): keep IEEE."""
    for name in ("conv", "matmul"):
        obj = getattr(getattr(torch.backends, "mkldnn", None), name, None)
        if obj is not None and getattr(obj, "fp32_precision", "none") not in ("none", "ieee"):
            obj.fp32_precision = "ieee"


def _conv_nd(mod: nn.Module, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    if isinstance(mod, nn.Linear):
        return F.linear(x, w, b)
    return mod._conv_forward(x, w, b)


def layer_forward(
    mod: nn.Module, x: torch.Tensor, weight: torch.Tensor | None = None, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """A convolution or linear layer on ``x`` in the arithmetic attached to ``mod`` (plain FP32 when none).

    ``weight``/``bias`` default to the module's; the fault injector passes one output channel's slice.
    """
    w = mod.weight if weight is None else weight
    b = mod.bias if weight is None else bias
    arith: Arithmetic | None = getattr(mod, "_diehard_arith", None)
    if arith is None:
        return _conv_nd(mod, x, w, b)
    if x.is_cuda:
        # Native arithmetic: the flags (and autocast) decide what cuDNN/cuBLAS compute for this call.
        with _cuda_flags(arith.cuda_tf32):
            if isinstance(arith, Autocast):
                with torch.autocast("cuda", dtype=arith.half):
                    return _conv_nd(mod, x, w, b)
            return arith.result(_conv_nd(mod, _match(x, w), w, b))
    # Emulated: the operands as the tensor cores see them, products and sums in FP32 (see each arithmetic).
    return arith.emulate(mod, x, _weight_operand(mod, arith, w, weight is None), b)


def _weight_operand(mod: nn.Module, arith: Arithmetic, w: torch.Tensor, whole: bool) -> torch.Tensor:
    """``arith.operand(w)``, memoised for the module's whole weight until it is written to.

    The fault injector rewrites a weight in place and back; every in-place write bumps the tensor's version
    counter, so a memo keyed on (version, storage) is never stale. Slices (one output channel) are not memoised.
    """
    if not whole:
        return arith.operand(w)
    key = (w._version, w.data_ptr(), arith.name)
    memo = mod.__dict__.get("_diehard_wmemo")
    if memo is not None and memo[0] == key:
        return memo[1]
    value = arith.operand(w)
    mod.__dict__["_diehard_wmemo"] = (key, value)
    return value


def _patched_forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return layer_forward(self, x)


@dataclass
class AppliedNumerics:
    """A policy installed on a model's layers; ``remove()`` restores the modules' own forward."""

    policy: NumericsPolicy
    layers: dict[str, str]
    device: str
    modules: list[nn.Module] = field(default_factory=list)
    kernels: dict[str, list[str]] | None = None

    @property
    def emulated(self) -> bool:
        return not self.device.startswith("cuda")

    def remove(self) -> None:
        for m in self.modules:
            for attr in ("forward", "_diehard_arith", "_diehard_wmemo"):
                m.__dict__.pop(attr, None)
        self.modules = []

    def record(self) -> dict[str, Any]:
        """What every result stores: the policy, the arithmetic of each layer, how it was computed, the flags."""
        rec: dict[str, Any] = {
            "policy": self.policy.spec(),
            "policy_rules": self.policy.to_json(),
            "layers": dict(self.layers),
            "device": self.device,
            "mode": "emulated (operands rounded, FP32 accumulation)" if self.emulated else "native (torch flags)",
            "backend_flags": backend_flags(),
            "torch": str(torch.__version__),
        }
        if self.kernels is not None:
            rec["cuda_kernels"] = self.kernels
        return rec

    def summary(self) -> str:
        counts: dict[str, int] = {}
        for a in self.layers.values():
            counts[a] = counts.get(a, 0) + 1
        if not self.emulated:
            how = "CUDA, native kernels"
        elif any(a != "fp32" for a in self.layers.values()):
            how = "emulated on the CPU"
        else:
            how = "CPU"
        return f"{self.policy.spec()} ({', '.join(f'{n} {a}' for a, n in counts.items())} layers; {how})"


def apply_numerics(model: nn.Module, policy: NumericsPolicy, device: str | torch.device = "cpu") -> AppliedNumerics:
    """Install ``policy`` on every convolution and linear module of ``model`` (see the module docstring).

    On CUDA the global default is also set to FP32 (TF32 off), so that only layers mapped to TF32 may use it,
    and cuDNN's autotuner is turned off (it may pick another kernel, hence other bits, from run to run).
    """
    policy.check(model)
    dev = str(torch.device(device))
    if dev.startswith("cuda"):
        set_backend_tf32(False)
        torch.backends.cudnn.benchmark = False
    else:
        _cpu_ieee()
    applied = AppliedNumerics(policy, policy.layer_map(model), dev)
    for name, m in model.named_modules():
        if isinstance(m, LAYER_TYPES):
            m._diehard_arith = ARITHMETICS[applied.layers[name]]
            # An instance attribute shadows the class's forward; nn.Module.__call__ (and torch.fx, which
            # keeps these modules as leaves) calls it, and the fault injector's channel shortcut calls
            # layer_forward directly.
            m.forward = _patched_forward.__get__(m)
            applied.modules.append(m)
    return applied


@contextlib.contextmanager
def numerics(model: nn.Module, policy: NumericsPolicy, device: str | torch.device = "cpu") -> Iterator[AppliedNumerics]:
    applied = apply_numerics(model, policy, device)
    try:
        yield applied
    finally:
        applied.remove()


def add_numerics_arg(p) -> None:
    """The ``--numerics`` option shared by ``sfi run``, ``evaluate``, ``golden`` and ``run``."""
    p.add_argument(
        "--numerics",
        default="fp32",
        help="arithmetic of the conv/linear layers: fp32 (default), tf32, autocast-fp16, autocast-bf16, an inline "
        "map 'layer3.*=tf32,*=fp32' or a TOML map file (see docs/sfi.md); recorded with the result. Off CUDA all "
        "but fp32 are emulated",
    )


@torch.no_grad()
def cuda_kernels(model: nn.Module, x: torch.Tensor) -> dict[str, list[str]]:
    """The CUDA kernels each convolution and linear layer ran on ``x`` (names as the profiler reports them).

    cuDNN chooses its kernels itself; a name with ``tf32`` (or the Ampere tensor-core tags ``1688``/``16816``
    with ``tf32``) shows TF32 tensor cores. Each layer runs alone on its own input under the profiler.
    """
    if not x.is_cuda:
        return {}
    from torch.profiler import ProfilerActivity, profile

    inputs: dict[str, torch.Tensor] = {}
    hooks = [
        m.register_forward_pre_hook(lambda _m, a, n=n: inputs.setdefault(n, a[0].detach()))
        for n, m in model.named_modules()
        if isinstance(m, LAYER_TYPES)
    ]
    try:
        model(x)
    finally:
        for h in hooks:
            h.remove()
    mods = dict(model.named_modules())
    out: dict[str, list[str]] = {}
    for name, inp in inputs.items():
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            mods[name](inp)
            torch.cuda.synchronize(x.device)
        cuda = torch.autograd.DeviceType.CUDA
        out[name] = sorted({e.key for e in prof.key_averages() if e.device_type == cuda})
    return out
