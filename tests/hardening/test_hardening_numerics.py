"""Numerics: TF32 rounding against an exact reference, the per-layer policy, the emulated layer arithmetic, the
CUDA flags it sets (the SFI engine under every map: tests/sfi/test_sfi_suite.py)."""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F
from diehardlab.hardening.numerics import (
    apply_numerics,
    backend_flags,
    layer_forward,
    numerics,
    parse_numerics,
    policy_from_map,
    read_backend_flags_raw,
    restore_backend_flags_raw,
    round_tf32,
)
from torch import nn

from diehardlab.errors import ConfigError


def _tf32_reference(v: float) -> float:
    """Round a float32 to 10 mantissa bits, nearest, ties to even: exact rational arithmetic, no bit tricks."""
    if v != v or v in (float("inf"), float("-inf")) or v == 0:
        return v
    exact = Fraction(v)
    mag = abs(exact)
    e = mag.numerator.bit_length() - mag.denominator.bit_length()
    if Fraction(2) ** e > mag:
        e -= 1
    ulp = Fraction(2) ** (max(e, -126) - 10)  # subnormals keep the smallest exponent's spacing
    q, r = divmod(mag, ulp)
    if r * 2 > ulp or (r * 2 == ulp and q % 2 == 1):
        q += 1
    out = float(q * ulp)
    if out >= 2.0**128:
        out = float("inf")
    return -out if exact < 0 else out


def test_round_tf32_matches_exact_rounding():
    g = torch.Generator().manual_seed(0)
    bits = torch.randint(-(2**31), 2**31 - 1, (4000,), generator=g, dtype=torch.int64).to(torch.int32)
    x = bits.view(torch.float32)
    x = x[torch.isfinite(x)]
    ties = [1 + 2**-11, 1 + 3 * 2**-11, -(1 + 2**-11), 2**-140 * 3, 3.4028235e38, -3.4028234e38, 1e-45, 65504.0]
    x = torch.cat([x, torch.tensor(ties, dtype=torch.float32), torch.randn(2000, generator=g)])
    got = round_tf32(x)
    want = torch.tensor([_tf32_reference(v) for v in x.tolist()], dtype=torch.float32)
    assert torch.equal(got.view(torch.int32), want.view(torch.int32))
    special = torch.tensor([float("inf"), float("-inf"), float("nan"), 0.0, -0.0])
    assert torch.equal(round_tf32(special).view(torch.int32), special.view(torch.int32))
    nan_payload = torch.tensor([0x7F800001], dtype=torch.int32).view(torch.float32)  # must stay NaN, not inf
    assert torch.isnan(round_tf32(nan_payload)).all()


def test_policies_parse_and_compress(tmp_path):
    p = parse_numerics("layer3.*=tf32, linear=fp32 ,*=fp32")
    assert p.rules == [("layer3.*", "tf32"), ("linear", "fp32")] and p.default == "fp32"
    assert p.arithmetic_for("layer3.1.conv2") == "tf32" and p.arithmetic_for("layer2.0.conv1") == "fp32"
    assert parse_numerics(p.spec()).spec() == p.spec() == "layer3.*=tf32,linear=fp32,*=fp32"
    assert parse_numerics("tf32").uniform == "tf32" and parse_numerics(None).spec() == "fp32"
    f = tmp_path / "map.toml"
    f.write_text(p.to_toml())
    assert parse_numerics(str(f)).spec() == p.spec()
    layers = {
        f"layer{s}.{b}.conv{c}": ("tf32" if s == 3 else "fp32") for s in (1, 2, 3) for b in range(3) for c in (1, 2)
    }
    assert policy_from_map({"conv1": "fp32", **layers, "linear": "fp32"}, "x").spec() == "layer3.*=tf32,*=fp32"
    for bad, word in (("fp16", "fp16"), ("layer3.*=tf64", "tf64"), ("layer3.*", "neither"), ("a=b=c", "PATTERN")):
        with pytest.raises(ConfigError, match=word):
            parse_numerics(bad)
    f.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ConfigError, match=r"map\.toml"):
        parse_numerics(str(f))
    f.write_text('[layers]\n"x" = 3\n')
    with pytest.raises(ConfigError, match=r"\[layers\]"):
        parse_numerics(str(f))
    with pytest.raises(ConfigError, match="matches no convolution or linear layer"):
        parse_numerics("layer9.*=tf32").check(nn.Sequential(nn.Conv2d(1, 2, 3)))


def test_emulated_tf32_is_the_rounded_operands_in_fp32():
    g = torch.Generator().manual_seed(1)
    conv, lin = nn.Conv2d(3, 8, 3, bias=True), nn.Linear(20, 5)
    x, v = torch.randn(2, 3, 9, 9, generator=g), torch.randn(4, 20, generator=g)
    model = nn.ModuleDict({"conv": conv, "lin": lin})
    with numerics(model, parse_numerics("conv=tf32,*=fp32"), "cpu") as applied:
        assert applied.layers == {"conv": "tf32", "lin": "fp32"}
        assert torch.equal(conv(x), F.conv2d(round_tf32(x), round_tf32(conv.weight), conv.bias))  # bias in FP32
        assert torch.equal(lin(v), F.linear(v, lin.weight, lin.bias))
        assert not torch.equal(conv(x), F.conv2d(x, conv.weight, conv.bias))
        # a flip of a low mantissa bit of a weight is rounded away: the output is bit-identical
        before = conv(x)
        with torch.no_grad():
            w = conv.weight
            w.view(torch.int32)[0, 0, 0, 0] ^= 1 << 5
            assert torch.equal(conv(x), before)
            w.view(torch.int32)[0, 0, 0, 0] ^= 1 << 5
        # the one-channel path of the fault injector computes the same channel
        assert torch.equal(layer_forward(conv, x, conv.weight[2:3], conv.bias[2:3])[:, 0], before[:, 2])
    assert "forward" not in conv.__dict__ and torch.equal(conv(x), F.conv2d(x, conv.weight, conv.bias))


def test_cuda_settings_are_made_and_recorded():
    """No GPU here: on a CUDA device the policy turns TF32 off globally and lets each layer allow it for its own
    call; these are torch's flags, settable and readable without a GPU."""
    saved = read_backend_flags_raw()
    try:
        model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
        applied = apply_numerics(model, parse_numerics("0=tf32,*=fp32"), "cuda")
        flags = backend_flags()
        assert flags["conv_tf32"] is False and flags["matmul_tf32"] is False and flags["cudnn.benchmark"] is False
        rec = applied.record()
        assert rec["mode"].startswith("native") and rec["layers"] == {"0": "tf32", "2": "fp32"}
        assert rec["backend_flags"]["conv_tf32"] is False
        from diehardlab.hardening.numerics import _cuda_flags

        with _cuda_flags(True):  # what layer_forward wraps a tf32 layer's call in on CUDA
            assert backend_flags()["conv_tf32"] and backend_flags()["matmul_tf32"]
        assert not backend_flags()["conv_tf32"]
        applied.remove()
    finally:
        restore_backend_flags_raw(saved)
