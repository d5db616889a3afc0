"""An exact emulation of fbgemm's int8 inference, in plain tensor operations that run on any device (CUDA).

Why: torch.ao's int8 kernels (fbgemm) run on x86 CPUs only; a campaign on a GPU must compute what the int8
deployment computes. Every quantized operation of a model converted by :mod:`diehardlab.hardening.quantize` is
replaced by a module that computes it from the integer codes, with fbgemm's own arithmetic (written against
FBGEMM's ``requantizeOutputProcessingAvx2`` and ``QuantizeAvx2`` and ATen's quantized CPU kernels):

- quantize: ``q = clamp(rint(x * (1/s)) + z, 0, 255)``, ``1/s`` and the product in float32, rint to nearest even;
- dequantize: ``(q - z) * s`` in float32;
- convolution and linear: the int32 accumulator ``sum (x_q - x_z) * w_q`` (computed in float64, where every
  partial sum of 8-bit products is an exact integer, and rounded back to that integer, so any convolution
  algorithm gives it exactly), then fbgemm's requantization per output channel: ``m = (s_x * s_w) / s_y`` and
  ``b' = bias / (s_x * s_w)`` in float32, ``y_q = clamp(rint((float(acc) + b') * m) + z_y, lo, 255)`` with
  ``lo = z_y`` when a ReLU is fused;
- add (and add+ReLU): both inputs dequantized as ATen's vectorised kernel does (one fused multiply-add
  ``s * q + (-z * s)``), summed in float32, requantized with ``1/s`` in float32;
- average pooling: the int32 sum of the codes minus ``z * size``, times ``(s_in / s_out) / size`` in float32,
  rounded; max pooling, ReLU, flatten, reshape and indexing act on the codes as they are.

The weights stay int8 codes with float32 per-channel scales (buffers ``weight``, ``weight_scale``, ``bias``), so
a fault in a code or a scale is the same fault as in the packed fbgemm weight. The tests compare the emulation
with torch.ao's kernels bit for bit, golden and faulty. An operation it does not know is refused by name.
"""

from __future__ import annotations

import copy
import operator
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from diehardlab.errors import ConfigError

INT32_MIN = -2147483648.0
INT32_FLOAT_MAX = 2147483520.0  # the largest float32 below 2**31, where fbgemm clips before converting


def f32(v: float) -> float:
    """``v`` rounded to float32 (kept in a Python float, which holds it exactly)."""
    return float(torch.tensor(v, dtype=torch.float32))


def _f32_div(a: float, b: float) -> float:
    return float(torch.tensor(a, dtype=torch.float32) / torch.tensor(b, dtype=torch.float32))


def _cvt_round(t: torch.Tensor) -> torch.Tensor:
    """x86's float32 -> int32 conversion after fbgemm's clip: nearest even; NaN and too-large values saturate as
    ``min_ps``/``cvtps`` do (NaN clips to the maximum, -inf and below-range give INT32_MIN). Float64 out."""
    t = torch.where(torch.isnan(t), torch.full_like(t, INT32_FLOAT_MAX), torch.clamp_max(t, INT32_FLOAT_MAX))
    return torch.round(t).double().clamp_min(INT32_MIN)


def _cvt_overflow(t: torch.Tensor) -> torch.Tensor:
    """x86's float32 -> int32 conversion (``cvtps2dq``) without a clip: nearest even; NaN, infinities and values
    outside int32 give the "integer indefinite" INT32_MIN. fbgemm's requantization converts this way, so a
    faulty bias or scale that overflows the accumulator's range writes the lowest code, not the highest. Float64."""
    r = torch.round(t).double()
    bad = ~torch.isfinite(r) | (r >= 2.0**31) | (r < INT32_MIN)
    return torch.where(bad, torch.full_like(r, INT32_MIN), r)


def _codes(r: torch.Tensor, zp: int, lo: int = 0, hi: int = 255) -> torch.Tensor:
    return (r + zp).clamp(lo, hi).to(torch.uint8)


SATURATING_CODE = 128  # below it, no pair of 8-bit products can leave int16 (2 * 127 * 128 < 32768)


def pair_loss(a: torch.Tensor, w: torch.Tensor, rows: int = 256) -> torch.Tensor:
    """sum over k-pairs of ``sat16(a[2p] w[2p] + a[2p+1] w[2p+1]) - (a[2p] w[2p] + a[2p+1] w[2p+1])``, per
    (row of ``a``, output channel): what fbgemm's AVX2 kernel loses to saturation.

    Its inner product multiplies unsigned activation codes by signed weight codes with ``vpmaddubsw``, which adds
    each pair of neighbouring products into a saturating int16 (then ``vpmaddwd`` widens the pairs to int32
    exactly). ``a`` holds the raw codes (rows x K), ``w`` the int8 codes (OC x K), K in fbgemm's packing order.
    Only rows with a code of 128 or more can saturate; the others are skipped."""
    out = torch.zeros(a.shape[0], w.shape[0], dtype=torch.float64, device=a.device)
    k = a.shape[1]
    ai = a.to(torch.int32)
    wi = w.to(torch.int32)
    if k % 2:
        ai = F.pad(ai, (0, 1))
        wi = F.pad(wi, (0, 1))
    hot = torch.nonzero((ai >= SATURATING_CODE).any(dim=1)).flatten()
    w0, w1 = wi[:, 0::2].t(), wi[:, 1::2].t()  # (K/2, OC)
    for i in range(0, hot.numel(), rows):
        r = hot[i : i + rows]
        sel = ai[r]
        pairs = sel[:, 0::2, None] * w0 + sel[:, 1::2, None] * w1  # (rows, K/2, OC), exact in int32
        out[r] = (pairs.clamp(-32768, 32767) - pairs).sum(dim=1).double()
    return out


class _Leaf(nn.Module):
    """An emulated operation: the SFI engine keeps it as one node (caches its output, recomputes it whole)."""

    _diehard_leaf = True


def fma_f32(product: torch.Tensor, addend: float) -> torch.Tensor:
    """``product + addend`` rounded once to float32, as a fused multiply-add does; ``product`` (float64) must be
    the exact product of two float32 values (it is: 24 + 24 bits fit in float64's 53).

    The float64 sum is rounded; when that rounding lands exactly on a float32 tie, the float64 error (TwoSum)
    says which side the exact sum was on, and one float64 step that way makes the float32 rounding correct."""
    s = product + addend
    bb = s - product
    err = (product - (s - bb)) + (addend - bb)
    s = torch.where(err != 0, torch.nextafter(s, s + err), s)
    return s.float()


class Quantize(_Leaf):
    """torch.quantize_per_tensor on the CPU: fbgemm's legacy path, ``fma(x, 1/s, z)`` then rint (one rounding of
    ``x/s + z``, so a value just above a half rounds with the zero point added)."""

    def __init__(self, scale: float, zero_point: int):
        super().__init__()
        self.scale, self.zero_point = float(scale), int(zero_point)
        self.inv = _f32_div(1.0, scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = fma_f32(x.float().double() * self.inv, float(self.zero_point))
        return _codes(_cvt_round(t), 0)

    def extra_repr(self) -> str:
        return f"scale={self.scale:.6g}, zero_point={self.zero_point}"


class Dequantize(_Leaf):
    def __init__(self, scale: float, zero_point: int):
        super().__init__()
        self.scale, self.zero_point = f32(scale), int(zero_point)

    def forward(self, q: torch.Tensor) -> torch.Tensor:
        return (q.float() - self.zero_point) * self.scale


def _vec_dequantize(q: torch.Tensor, scale: float, zero_point: int) -> torch.Tensor:
    """ATen's vectorised dequantize: fmadd(scale, q, scale * -zp), one rounding."""
    premul = float(torch.tensor(scale, dtype=torch.float32) * -float(zero_point))
    return fma_f32(q.double() * scale, premul)


class _Layer(_Leaf):
    """Shared by the emulated conv and linear: int8 weight codes, float32 per-channel scales, float32 bias."""

    def _init_weights(self, mod: nn.Module, in_scale: float, in_zp: int) -> None:
        w = mod.weight()
        if w.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
            scales, zps = w.q_per_channel_scales(), w.q_per_channel_zero_points()
            if w.q_per_channel_axis() != 0:
                raise ConfigError(f"int8 emulation: {self._name}: weight scales along axis {w.q_per_channel_axis()}")
        else:
            scales = torch.full((w.shape[0],), w.q_scale(), dtype=torch.float64)
            zps = torch.full((w.shape[0],), w.q_zero_point(), dtype=torch.int64)
        self.register_buffer("weight", w.int_repr().clone())
        self.register_buffer("weight_scale", scales.float().clone())
        self.register_buffer("weight_zero_point", zps.to(torch.int32).clone())
        b = mod.bias()
        self.register_buffer("bias", b.detach().float().clone() if b is not None else None)
        self.in_scale, self.in_zp = f32(in_scale), int(in_zp)
        self.out_scale, self.out_zp = f32(float(mod.scale)), int(mod.zero_point)

    def _diehard_stored(self, pre: str) -> list:
        from diehardlab.hardening.sfi.targets import TensorStored

        out = [
            TensorStored(pre + "weight", self.weight, scale_of=self.weight_scale),
            TensorStored(pre + "weight_scale", self.weight_scale),
        ]
        if self.bias is not None:
            out.append(TensorStored(pre + "bias", self.bias))
        return out

    def _requantize(self, acc: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * (acc.dim() - 2)
        atw = (self.weight_scale * self.in_scale).view(shape)  # float32, as fbgemm's act_times_w_scale
        mult = atw / self.out_scale
        xf = acc.float()
        if self.bias is not None:
            xf = xf + self.bias.view(shape) / atw
        lo = self.out_zp if self.relu else 0
        return _codes(_cvt_overflow(xf * mult), self.out_zp, lo)

    def _int_weight(self) -> torch.Tensor:
        w = self.weight.double()
        if bool(self.weight_zero_point.any()):
            w = w - self.weight_zero_point.double().view(-1, *([1] * (w.dim() - 1)))
        return w


class Conv(_Layer):
    def __init__(self, name: str, mod: nn.Module, in_scale: float, in_zp: int, relu: bool):
        super().__init__()
        self._name = name
        if getattr(mod, "padding_mode", "zeros") != "zeros":
            raise ConfigError(f"int8 emulation: layer {name}: padding_mode {mod.padding_mode!r} is not emulated")
        self._init_weights(mod, in_scale, in_zp)
        self.relu = relu
        self.stride, self.padding, self.dilation, self.groups = mod.stride, mod.padding, mod.dilation, mod.groups
        self._fn = {3: F.conv1d, 4: F.conv2d, 5: F.conv3d}[self.weight.dim()]

    _diehard_layer_kind = "conv"

    def forward(self, xq: torch.Tensor) -> torch.Tensor:
        x = xq.double() - self.in_zp
        # float64 holds every partial sum of 8-bit products exactly; rounding undoes any algorithm's error
        acc = self._fn(x, self._int_weight(), None, self.stride, self.padding, self.dilation, self.groups).round()
        if bool((xq >= SATURATING_CODE).any()):
            acc = acc + self._saturation(xq)
        return self._requantize(acc)

    def _saturation(self, xq: torch.Tensor) -> torch.Tensor:
        """What fbgemm's 16-bit pair sums lose where they saturate, per output element (see :func:`pair_loss`).

        fbgemm's im2col orders a patch (kernel row, kernel column, input channel), channel fastest, as it packs
        NHWC activations; the padding holds the zero point's code."""
        if self.weight.dim() != 4 or self.groups != 1:
            raise ConfigError(
                f"int8 emulation: layer {self._name}: activation codes above 127 reach a "
                f"{'grouped ' if self.groups != 1 else ''}{self.weight.dim() - 2}-d convolution, whose fbgemm "
                "16-bit saturation is not emulated"
            )
        n, c, _, _ = xq.shape
        kh, kw = self.weight.shape[-2:]
        ph, pw = self.padding
        x = F.pad(xq.double(), (pw, pw, ph, ph), value=float(self.in_zp))
        cols = F.unfold(x, (kh, kw), dilation=self.dilation, stride=self.stride)  # (N, C*kh*kw, L): c slowest
        cols = cols.view(n, c, kh * kw, -1).transpose(1, 2).reshape(n, c * kh * kw, -1)  # (r, s, c) order
        w = self.weight.permute(0, 2, 3, 1).reshape(self.weight.shape[0], -1)  # (OC, K) in the same order
        loss = pair_loss(cols.transpose(1, 2).reshape(-1, cols.shape[1]), w)  # (N*L, OC)
        oh = (x.shape[2] - self.dilation[0] * (kh - 1) - 1) // self.stride[0] + 1
        return loss.view(n, -1, w.shape[0]).transpose(1, 2).reshape(n, w.shape[0], oh, -1)


class Linear(_Layer):
    _diehard_layer_kind = "linear"

    def __init__(self, name: str, mod: nn.Module, in_scale: float, in_zp: int, relu: bool):
        super().__init__()
        self._name = name
        self._init_weights(mod, in_scale, in_zp)
        self.relu = relu

    def forward(self, xq: torch.Tensor) -> torch.Tensor:
        acc = F.linear(xq.double() - self.in_zp, self._int_weight()).round()
        flat = acc.reshape(-1, acc.shape[-1])
        if bool((xq >= SATURATING_CODE).any()):
            flat = flat + pair_loss(xq.reshape(-1, xq.shape[-1]).double(), self.weight)
        return self._requantize(flat).reshape(acc.shape)


class Add(_Leaf):
    def __init__(self, a: tuple[float, int], b: tuple[float, int], out: tuple[float, int], relu: bool):
        super().__init__()
        self.a = (f32(a[0]), int(a[1]))
        self.b = (f32(b[0]), int(b[1]))
        self.out_zp = int(out[1])
        self.inv = _f32_div(1.0, f32(out[0]))
        self.relu = relu

    def forward(self, qa: torch.Tensor, qb: torch.Tensor, *_qparams: Any) -> torch.Tensor:
        c = _vec_dequantize(qa, *self.a) + _vec_dequantize(qb, *self.b)
        if self.relu:
            c = torch.clamp_min(c, 0.0)
        return _codes(_cvt_round(c * self.inv), self.out_zp)


class AvgPool(_Leaf):
    """avg_pool2d / adaptive_avg_pool2d on codes: ATen's NHWC kernels (the layout fbgemm's layers output).

    The int32 window sum minus ``z_in * size``, then ``(s_in / s_out) / size`` in float32: avg_pool2d multiplies
    by it, adaptive pooling by the float32 reciprocal of its reciprocal (it calls the quantizer with scale
    ``1 / multiplier``)."""

    def __init__(self, fn: Any, qp: tuple[float, int], out: tuple[float, int]):
        super().__init__()
        self.adaptive = fn in _ADAPTIVE
        self.zp, self.out_zp = int(qp[1]), int(out[1])
        self.ratio = _f32_div(f32(qp[0]), f32(out[0]))

    def _factor(self, size: int) -> float:
        mult = _f32_div(self.ratio, float(size))
        return _f32_div(1.0, _f32_div(1.0, mult)) if self.adaptive else mult

    def forward(self, q: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        x = q.double()
        nhwc = q.dim() == 4 and q.is_contiguous(memory_format=torch.channels_last) and q.shape[1] > 1
        if self.adaptive:
            out_size = args[0] if args else kwargs["output_size"]
            oh, ow = (out_size, out_size) if isinstance(out_size, int) else tuple(out_size)
            ih, iw = x.shape[-2:]
            rows = []
            for i in range(oh):
                h0, h1 = (i * ih) // oh, -((-(i + 1) * ih) // oh)
                cols = []
                for j in range(ow):
                    w0, w1 = (j * iw) // ow, -((-(j + 1) * iw) // ow)
                    size = (h1 - h0) * (w1 - w0)
                    acc = x[..., h0:h1, w0:w1].sum(dim=(-2, -1)) - self.zp * size
                    if nhwc:  # quantize_vec: fbgemm's legacy quantizer, fma(acc, 1/scale, z), one rounding
                        cols.append(fma_f32(acc.float().double() * self._factor(size), float(self.out_zp)))
                    else:
                        cols.append(acc.float() / _f32_div(1.0, self._factor(size)) + float(self.out_zp))
                rows.append(torch.stack(cols, dim=-1))
            out = _codes(_cvt_round(torch.stack(rows, dim=-2)), 0)
            return out.contiguous(memory_format=torch.channels_last) if nhwc else out
        spec = _pool_args(args, kwargs)
        if spec["padding"] not in (0, (0, 0), [0, 0]) or spec.get("divisor_override") or spec.get("ceil_mode"):
            raise ConfigError("int8 emulation: avg_pool2d with padding, ceil_mode or a divisor is not emulated")
        k = spec["kernel_size"]
        kk = (k, k) if isinstance(k, int) else tuple(k)
        size = kk[0] * kk[1]
        # float64 sums of codes are exact integers
        acc = F.avg_pool2d(x, kk, spec["stride"] or kk, divisor_override=1) - self.zp * size
        mult = self._factor(size)
        if not nhwc:
            # the NCHW kernel quantizes each value on its own: zp + acc / (1 / multiplier), nearbyint
            t = acc.float() / _f32_div(1.0, mult) + float(self.out_zp)
            return _codes(_cvt_round(t), 0)
        return _codes(_cvt_round(acc.float() * mult), self.out_zp).contiguous(memory_format=torch.channels_last)


def _pool_args(args: tuple, kwargs: dict) -> dict:
    names = ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override")
    spec = dict(zip(names, args))
    spec.update(kwargs)
    spec.setdefault("stride", None)
    spec.setdefault("padding", 0)
    return spec


class MaxPool(_Leaf):
    def __init__(self, fn: Any):
        super().__init__()
        self.fn = fn

    def forward(self, q: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        # the maximum of codes is the code of the maximum (a positive scale keeps the order)
        return self.fn(q.float(), *args, **kwargs).to(torch.uint8)


class ReLU(_Leaf):
    def __init__(self, zp: int):
        super().__init__()
        self.zp = int(zp)

    def forward(self, q: torch.Tensor, *_: Any, **__: Any) -> torch.Tensor:
        return torch.clamp_min(q, self.zp)


_ADAPTIVE = {F.adaptive_avg_pool2d, torch._C._nn.adaptive_avg_pool2d}
_AVG = {F.avg_pool2d, torch._C._nn.avg_pool2d} | _ADAPTIVE
_MAX = {F.max_pool2d, torch.max_pool2d}
_RELU = {F.relu, torch.relu}
# operations that only move codes (their result is the same codes in another shape or order)
_MOVE_FUNCS = {torch.flatten, torch.reshape, operator.getitem, getattr, torch.squeeze, torch.unsqueeze}
_MOVE_METHODS = {"flatten", "reshape", "view", "contiguous", "size", "squeeze", "unsqueeze", "permute", "transpose"}
_MOVE_MODULES = (nn.Identity, nn.Flatten, nn.Dropout)


class _Recorder(fx.Interpreter):
    """Runs the torch.ao model once; keeps (scale, zero point) of every quantized value."""

    def __init__(self, gm: fx.GraphModule):
        super().__init__(gm)
        self.qp: dict[fx.Node, tuple[float, int]] = {}

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        if isinstance(out, torch.Tensor) and out.is_quantized:
            if out.qscheme() not in (torch.per_tensor_affine, torch.per_tensor_symmetric) or out.dtype != torch.quint8:
                raise ConfigError(f"int8 emulation: node {n.name}: activation {out.dtype} {out.qscheme()}")
            self.qp[n] = (float(out.q_scale()), int(out.q_zero_point()))
        return out


def _set_module(root: nn.Module, target: str, new: nn.Module) -> None:
    parent, _, leaf = target.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, new)


def emulate_int8(quantized: fx.GraphModule, example: torch.Tensor) -> fx.GraphModule:
    """The emulated copy of a torch.ao int8 GraphModule (see the module docstring); same layer names."""
    import torch.ao.nn.intrinsic.quantized as nniq
    import torch.ao.nn.quantized as nnq

    gm = copy.deepcopy(quantized).cpu()
    rec = _Recorder(gm)
    with torch.no_grad():
        rec.run(example[:1].cpu().float())
    qp = rec.qp
    mods = dict(gm.named_modules())
    count = 0

    def add_module(node: fx.Node, mod: nn.Module, args: tuple, kwargs: dict | None = None) -> None:
        nonlocal count
        name = f"_int8emu_{count}_{node.name}"
        count += 1
        gm.add_module(name, mod)
        node.op, node.target, node.args, node.kwargs = "call_module", name, args, kwargs or {}

    def quantized_input(node: fx.Node) -> bool:
        return any(isinstance(a, fx.Node) and a in qp for a in node.all_input_nodes)

    for node in list(gm.graph.nodes):
        if node.op == "call_module":
            mod = mods[node.target]
            if isinstance(mod, (nnq.Conv1d, nnq.Conv2d, nnq.Conv3d)):
                relu = isinstance(mod, (nniq.ConvReLU1d, nniq.ConvReLU2d, nniq.ConvReLU3d))
                _set_module(gm, node.target, Conv(node.target, mod, *qp[node.args[0]], relu))
            elif isinstance(mod, nnq.Linear):
                _set_module(
                    gm, node.target, Linear(node.target, mod, *qp[node.args[0]], isinstance(mod, nniq.LinearReLU))
                )
            elif quantized_input(node):
                if isinstance(mod, nn.ReLU):
                    _set_module(gm, node.target, ReLU(qp[node.args[0]][1]))
                elif isinstance(mod, nn.MaxPool2d):
                    fn = lambda x, m=mod: F.max_pool2d(x, m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode)  # noqa: E731
                    _set_module(gm, node.target, MaxPool(fn))
                elif isinstance(mod, nn.AdaptiveAvgPool2d):
                    add_module(
                        node,
                        AvgPool(F.adaptive_avg_pool2d, qp[node.args[0]], qp[node]),
                        (node.args[0], mod.output_size),
                    )
                elif not isinstance(mod, _MOVE_MODULES):
                    raise _unknown(node, type(mod).__name__)
        elif node.op == "call_function":
            t = node.target
            if t is torch.quantize_per_tensor:
                add_module(node, Quantize(*qp[node]), (node.args[0],))
            elif t in (torch.ops.quantized.add, torch.ops.quantized.add_relu):
                relu = t is torch.ops.quantized.add_relu
                a, b = node.args[0], node.args[1]
                add_module(node, Add(qp[a], qp[b], qp[node], relu), (a, b))
            elif quantized_input(node):
                if t in _AVG:
                    add_module(node, AvgPool(t, qp[node.args[0]], qp[node]), node.args, node.kwargs)
                elif t in _MAX:
                    add_module(node, MaxPool(t), node.args, node.kwargs)
                elif t in _RELU:
                    add_module(node, ReLU(qp[node.args[0]][1]), (node.args[0],))
                elif t not in _MOVE_FUNCS:
                    raise _unknown(node, getattr(t, "__name__", str(t)))
        elif node.op == "call_method":
            if node.target == "dequantize":
                add_module(node, Dequantize(*qp[node.args[0]]), (node.args[0],))
            elif quantized_input(node) and node.target not in _MOVE_METHODS:
                if node.target in ("relu", "relu_"):
                    add_module(node, ReLU(qp[node.args[0]][1]), (node.args[0],))
                else:
                    raise _unknown(node, f".{node.target}()")
    gm.graph.eliminate_dead_code()
    gm.recompile()
    gm.delete_all_unused_submodules()
    return gm.eval()


def _unknown(node: fx.Node, what: str) -> ConfigError:
    return ConfigError(
        f"int8 emulation: {node.name} ({what}) is a quantized operation the emulation does not compute; "
        "run this model on the CPU, where torch.ao's own int8 kernels compute it"
    )
