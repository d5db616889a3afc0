"""Faults in every number format: the bits of each format, the cached engine bit-identical to the naive full
forward (weights and activations, float32/float16/bfloat16/int8 and both autocast modes) on the suite's ResNet-20
and a digits model, the int8 emulation bit-identical to torch.ao's fbgemm kernels, and the refusals."""

from __future__ import annotations

import copy
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from diehardlab.hardening.int8emu import emulate_int8
from diehardlab.hardening.models import ModelConfig, build_model
from diehardlab.hardening.numerics import parse_numerics
from diehardlab.hardening.quantize import quantize_int8
from diehardlab.hardening.sfi import bits
from diehardlab.hardening.sfi.engine import Images, Injector
from diehardlab.hardening.sfi.faultlist import Fault
from diehardlab.hardening.sfi.targets import layer_kind, output_shapes, stored_tensors
from torch import nn

from diehardlab.errors import ConfigError

STRUCT = {"float16": ("<e", "<H"), "float32": ("<f", "<I")}


def _ref_bits(v: float, fmt: str, bit: int, model: str) -> int:
    """The stored pattern after the fault, computed with struct / plain integers (independent of torch views)."""
    if fmt == "bfloat16":
        (i,) = struct.unpack("<I", struct.pack("<f", v))
        i >>= 16  # bfloat16 is float32's upper half
    elif fmt in STRUCT:
        (i,) = struct.unpack(STRUCT[fmt][1], struct.pack(STRUCT[fmt][0], v))
    else:
        i = int(v) & 0xFF  # int8 two's complement (uint8 as is)
    if model == "bitflip":
        return i ^ (1 << bit)
    return i | (1 << bit) if model == "stuck-at-1" else i & ~(1 << bit)


@pytest.mark.parametrize("fmt", ["float32", "float16", "bfloat16", "int8", "uint8"])
def test_every_bit_of_every_format_against_struct(fmt):
    f = bits.get_format(fmt)
    vals = [-3.5, 0.0, 1.0, 100.0, -0.0] if f.is_float else [-128, -1, 0, 5, 127]
    if fmt == "uint8":
        vals = [0, 1, 128, 200, 255]
    x = torch.tensor(vals, dtype=f.storage)
    unsigned = {8: 0xFF, 16: 0xFFFF, 32: 0xFFFFFFFF}[f.width]
    for bit in range(f.width):
        for model in ("bitflip", "stuck-at-0", "stuck-at-1"):
            got = bits.apply_model(x, model, bit).view(f.view).to(torch.int64) & unsigned
            want = [_ref_bits(float(v), fmt, bit, model) & unsigned for v in x.float()]
            assert got.tolist() == want, (fmt, bit, model)
    with pytest.raises(ValueError, match=f"0..{f.width - 1} for {fmt}"):
        bits.flip(x, f.width)
    top = {"int8": "sign", "uint8": "integer"}.get(fmt, "sign")
    assert (f.field(f.width - 1), f.field(0)) == (top, "mantissa" if f.is_float else "integer")


# ------------------------------------------------------------------------------------------ models in each format


def _resnet20(suite_data: Path) -> nn.Module:
    from diehardlab.hardening.zoo import build
    from diehardlab.hardening.zoo.cli import read_weights

    state, _ = read_weights(suite_data / "ResNet20.th")
    m = build("cifar10/resnet20")
    m.load_state_dict(state)
    return m.eval()


def _digits() -> tuple[nn.Module, torch.Tensor]:
    """A digits smallnet (the project's own architecture) with its initial weights, and 16 digits images."""
    from diehardlab.hardening.data import load_dataset

    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="smallnet", width=4), 1, 10)
    return model.eval(), load_dataset("digits", "test").x[:16]


_QUANTIZED: dict[int, nn.Module] = {}  # one PTQ per float model (torch.ao's prepare/convert costs seconds)


def _int8(model: nn.Module, calib: torch.Tensor) -> nn.Module:
    if id(model) not in _QUANTIZED:
        _QUANTIZED[id(model)] = quantize_int8(model, calib)
    return _QUANTIZED[id(model)]


def _in_format(model: nn.Module, fmt: str, calib: torch.Tensor) -> tuple[nn.Module, torch.dtype | None, str | None]:
    """(model, input dtype, numerics) for one of the formats under test; ``model`` is left as it is."""
    if fmt == "int8":
        return copy.deepcopy(_int8(model, calib)), None, None
    if fmt == "int8-emulated":
        return emulate_int8(_int8(model, calib), calib), None, None
    m = copy.deepcopy(model)
    if fmt in ("float16", "bfloat16"):
        return m.to(getattr(torch, fmt)), getattr(torch, fmt), None
    return m, None, (fmt if fmt.startswith("autocast") else None)


def _faults(model: nn.Module, x: torch.Tensor, n: int, seed: int) -> list[Fault]:
    """``n`` weight faults (weight codes, biases, int8 scales) and ``n`` activation faults, every bit of the
    format reachable, in every fault model."""
    rng = np.random.default_rng(seed)
    stored = [s for s in stored_tensors(model).values() if not s.name.endswith("running_mean")]
    stored = [s for s in stored if s.name.rsplit(".", 1)[0] in _layers(model)]
    shapes = output_shapes(model, x[:1])
    out: list[Fault] = []
    models = ("bitflip", "stuck-at-0", "stuck-at-1")
    for k in range(n):
        s = stored[rng.integers(len(stored))]
        idx = tuple(int(rng.integers(d)) for d in s.shape)
        # the top bits (sign, exponent) every other fault: they are where the outcomes differ
        bit = int(rng.integers(s.fmt.width)) if k % 2 else s.fmt.width - 1 - int(rng.integers(3))
        out.append(Fault(len(out), s.name, idx, bit, models[k % 3]))
    names = sorted(shapes)
    for k in range(n):
        name = names[rng.integers(len(names))]
        fmt, shape = shapes[name]
        idx = tuple(int(rng.integers(d)) for d in shape)
        width = fmt.width
        bit = int(rng.integers(width)) if k % 2 else width - 1 - int(rng.integers(3))
        out.append(Fault(len(out), f"{name}.output", idx, bit, models[k % 3]))
    return out


def _layers(model: nn.Module) -> set[str]:
    return {name for name, mod in model.named_modules() if layer_kind(mod)}


def _check_exact(model: nn.Module, x: torch.Tensor, fmt: str, calib: torch.Tensor, n: int, seed: int) -> None:
    m, dtype, numerics = _in_format(model, fmt, calib)
    images = Images(x, torch.full((x.shape[0],), -1), [str(i) for i in range(x.shape[0])])
    policy = parse_numerics(numerics) if numerics else None
    cached = Injector(m, images, batch_size=x.shape[0], numerics=policy, input_dtype=dtype)
    naive = Injector(m, images, batch_size=x.shape[0], engine="naive", numerics=policy, input_dtype=dtype)
    faults = _faults(m, x.to(dtype or x.dtype), n, seed)
    before = {k: v.clone() for k, v in m.state_dict().items() if isinstance(v, torch.Tensor)}
    cached._cache(0)  # the golden pass, before any fault is written (as run() does)
    differ = 0
    for f in faults:
        a, b = cached._one(f, 0), naive._one(f, 0)
        a = cached.golden[0] if a is None else a
        b = naive.golden[0] if b is None else b
        assert bits.bits_equal(a, b), (fmt, f)
        differ += not bits.bits_equal(a, cached.golden[0])
    after = m.state_dict()
    assert all(bits.bits_equal(v, after[k]) for k, v in before.items()), "a fault was not restored"
    assert differ, f"{fmt}: no fault changed the output: the test would not see a difference"


FORMATS = ["float32", "float16", "bfloat16", "autocast-fp16", "autocast-bf16", "int8", "int8-emulated"]


@pytest.fixture(scope="module")
def resnet20():
    """The suite's ResNet-20 (its weights) and the 20 real CIFAR-10 images of the foolbox wheel."""
    import importlib.util

    from diehardlab.hardening.data import load_dataset
    from diehardlab.hardening.zoo import NORMALISATION

    from tests.conftest import SUITE

    folder = Path(importlib.util.find_spec("torch").origin).parents[1] / "foolbox" / "data"
    if not (SUITE / "ResNet20.th").is_file() or not (folder / "cifar10_00_3.png").is_file():
        pytest.skip("the suite's ResNet20.th or the foolbox wheel's images are not here")
    ds = load_dataset("cifar10", "test", folder, NORMALISATION["cifar10"])
    return _resnet20(SUITE), ds.x


@pytest.mark.parametrize("fmt", FORMATS)
def test_cached_equals_naive_resnet20_every_format(resnet20, fmt):
    model, x = resnet20
    _check_exact(model, x[:2], fmt, x, n=4, seed=1)


@pytest.fixture(scope="module")
def digits():
    return _digits()


@pytest.mark.parametrize("fmt", FORMATS)
def test_cached_equals_naive_digits_every_format(digits, fmt):
    model, x = digits
    _check_exact(model, x[:4], fmt, x, n=12, seed=2)


@pytest.mark.parametrize("which", ["resnet20", "digits"])
def test_int8_emulation_is_fbgemm_bit_for_bit(request, which):
    """The emulation (what a CUDA campaign runs) against torch.ao's fbgemm kernels on the CPU: the same faults
    (weight codes, per-channel scales, biases, activation codes) give bit-identical outputs."""
    model, x = request.getfixturevalue(which)
    calib = x
    ao = copy.deepcopy(_int8(model, calib))
    emu = emulate_int8(ao, calib)
    images = Images(x[:4], torch.full((4,), -1), [str(i) for i in range(4)])
    ref = Injector(ao, images, batch_size=4, engine="naive")
    got = Injector(emu, images, batch_size=4)
    assert bits.bits_equal(ref.golden[0], got.golden[0])
    faults = _faults(ao, x, 10, seed=5)
    # every target kind of an int8 layer: codes, scales, the float32 bias, the output codes
    kinds = {f.tensor.rsplit(".", 1)[1] for f in faults}
    assert {"weight", "weight_scale", "output"} <= kinds, kinds
    got._cache(0)
    differ = 0
    for f in faults:
        a, b = ref._one(f, 0), got._one(f, 0)
        a = ref.golden[0] if a is None else a
        b = got.golden[0] if b is None else b
        assert bits.bits_equal(a, b), f
        differ += not bits.bits_equal(a, ref.golden[0])
    assert differ, "no fault changed the output"


def test_a_list_for_another_format_is_refused_by_row(digits):
    from diehardlab.hardening.sfi.faultlist import check_against, to_width

    model, x = digits
    half = copy.deepcopy(model).to(torch.float16)
    ok = Fault(0, "stem.conv.weight", (0, 0, 0, 0), 15)
    faults = [ok, Fault(1, "stem.conv.weight", (0, 0, 1, 0), 20), Fault(2, "fc.bias", (3,), 31)]
    check_against(faults, model)  # float32: every bit fits
    with pytest.raises(
        ConfigError,
        match=r"line 12: bit 20 is outside parameter stem.conv.weight, stored in "
        r"float16 \(bits 0..15\); 2 of 3 rows do not fit: a list for another format",
    ):
        check_against(faults, half, lines=[11, 12, 13])
    # the same sites scaled to the format's width: the sign stays the sign
    widths = {n: s.fmt.width for n, s in stored_tensors(half).items()}
    scaled = to_width(faults, widths)
    assert [f.bit for f in scaled] == [7, 10, 15] and [f.index for f in scaled] == [f.index for f in faults]
    check_against(scaled, half)
    shapes = output_shapes(half, x[:1].half())
    assert shapes["stem.conv"][0].name == "float16"
    check_against([Fault(3, "stem.conv.output", (0, 1, 1), 15)], half, shapes)
    with pytest.raises(ConfigError, match=r"bit 16 is outside layer output stem\.conv\.output"):
        check_against([Fault(3, "stem.conv.output", (0, 1, 1), 16)], half, shapes)


def test_an_int8_model_is_planned_in_its_codes(digits):
    """Populations of 8 bits per weight code (the float32 bias apart), and data-aware p(i) from the change in the
    number a flipped code stands for: the same in fbgemm's layers and in their emulation."""
    from diehardlab.hardening.sfi.plan import bit_stats, make_plan

    model, x = digits
    ao = _int8(model, x)
    emu = emulate_int8(copy.deepcopy(ao), x[:1])
    plans = [make_plan(m, "data-aware") for m in (ao, emu)]
    for plan in plans:
        assert {layer.width for layer in plan.layers} == {8} and all(len(v) == 8 for v in plan.p_table.values())
        assert all(t.endswith(".weight") for layer in plan.layers for t in layer.tensors)
        assert {s.bit for s in plan.strata} == set(range(8))
    assert plans[0].p_table == plans[1].p_table
    # a code's bit i moves it by 2^i (bit 7, the sign, by 128): D_avg(i) is scale x 2^i, whatever the codes
    codes = torch.tensor([-128, -1, 0, 5, 127], dtype=torch.int8)
    d = bit_stats(codes, torch.full((5,), 0.5))["d_avg"]
    assert list(d) == pytest.approx([0.5 * 2**i for i in range(7)] + [64.0])
    assert sum(s.population for s in plans[0].strata if s.bit == 0) == 2 * sum(layer.numel for layer in plans[0].layers)
