"""The cached engine gives exactly the outcomes of a naive full forward pass with the same fault."""

from __future__ import annotations

import copy
import struct

import numpy as np
import pytest
import torch
from diehardlab.hardening.sfi import bits
from diehardlab.hardening.sfi.engine import Images, Injector, classify
from diehardlab.hardening.sfi.faultlist import Fault, draw
from diehardlab.hardening.sfi.plan import make_plan
from torch import nn


def _flip_python(v: float, bit: int, model: str) -> int:
    """Reference bit operation on the float's bits (as a signed int32), independent of the torch code."""
    (i,) = struct.unpack("<I", struct.pack("<f", v))
    if model == "bitflip":
        i ^= 1 << bit
    elif model == "stuck-at-1":
        i |= 1 << bit
    else:
        i &= ~(1 << bit) & 0xFFFFFFFF
    return struct.unpack("<i", struct.pack("<I", i))[0]


def _write(t: torch.Tensor, idx: tuple, f: Fault) -> None:
    if f.model == "value":
        t[idx] = f.value
    else:
        t.view(torch.int32)[idx] = _flip_python(t[idx].item(), f.bit, f.model)


def naive_outcomes(model: nn.Module, x: torch.Tensor, faults: list[Fault]) -> np.ndarray:
    """A deep copy per fault, the weight rewritten with struct, a full forward pass: the obvious way."""
    with torch.no_grad():
        golden = model(x)
        rows = []
        for f in faults:
            m = copy.deepcopy(model)
            hook = None
            if f.is_activation:
                mod = dict(m.named_modules())[f.module]

                def h(_m, _i, out, f=f):
                    out = out.clone()
                    for img in range(out.shape[0]):
                        _write(out, (img, *f.index), f)
                    return out

                hook = mod.register_forward_hook(h)
            else:
                _write(dict(m.named_parameters())[f.tensor].data, f.index, f)
            y = m(x)
            if hook:
                hook.remove()
            rows.append(classify(y, golden).numpy())
    return np.array(rows, dtype=np.int8)


def test_bits_match_struct():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, generator=g)
    for bit in (0, 7, 22, 23, 30, 31):
        for model in ("bitflip", "stuck-at-0", "stuck-at-1"):
            got = bits.apply_model(x, model, bit)
            want = torch.tensor([_flip_python(v, bit, model) for v in x.tolist()], dtype=torch.int32)
            assert torch.equal(got.view(torch.int32), want), (bit, model)


def test_classify_codes():
    g = torch.tensor([[1.0, 2.0, 0.5], [3.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    o = torch.tensor([[1.0, 2.0, 0.5], [3.0, 0.5, 1.0], [1.0, 2.0, 0.0], [0.0, float("nan"), 0.0]])
    assert classify(o, g).tolist() == [0, 1, 2, 2]


@pytest.mark.parametrize("fault_model", ["bitflip", "stuck-at"])
def test_cached_engine_identical_to_naive_full_forward(tiny_resnet, tiny_images, fault_model):
    x, y = tiny_images
    plan = make_plan(tiny_resnet, "network", error=0.05, fault_model=fault_model)
    faults = draw(plan, seed=11)
    # every bit position of every layer, including the sign and exponent bits that make inf/NaN
    faults = (
        faults[:150]
        + [Fault(1000 + b, "layer2.conv1.weight", (3, 1, 0, 2), b, "bitflip") for b in range(32)]
        + [Fault(2000 + b, "fc.bias", (b % 10,), b, "bitflip") for b in range(32)]
    )
    want = naive_outcomes(tiny_resnet, x, faults)
    inj = Injector(tiny_resnet, Images(x, y, [str(i) for i in range(len(y))]), batch_size=5)
    got = inj.run(faults)
    assert got.shape == (len(faults), len(y))
    np.testing.assert_array_equal(got, want)
    naive = Injector(tiny_resnet, Images(x, y, []), batch_size=5, engine="naive").run(faults)
    np.testing.assert_array_equal(naive, want)
    # the list is not trivial: all three outcomes occur
    assert set(np.unique(got)) == {0, 1, 2}
    # restored: the model is unchanged after the run
    ref = TinyCheck(tiny_resnet)
    assert ref.same_as_before()


class TinyCheck:
    def __init__(self, model):
        self.model = model
        self.snapshot = {k: v.clone() for k, v in model.state_dict().items()}

    def same_as_before(self) -> bool:
        return all(bits.bits_equal(v, self.snapshot[k]) for k, v in self.model.state_dict().items())


def test_activation_faults_identical_to_naive(tiny_resnet, tiny_images):
    x, y = tiny_images
    plan = make_plan(tiny_resnet, "layer", error=0.2, fault_model="bitflip", target="activations", example=x)
    faults = draw(plan, seed=3)[:120]
    faults += [Fault(900, "layer1.conv2.output", (2, 3, 4), -1, "value", 1e4)]
    got = Injector(tiny_resnet, Images(x, y, []), batch_size=4).run(faults)
    np.testing.assert_array_equal(got, naive_outcomes(tiny_resnet, x, faults))
    assert got[-1].max() >= 1


def test_weights_restored_after_run(tiny_resnet, tiny_images):
    x, y = tiny_images
    before = TinyCheck(tiny_resnet)
    faults = [Fault(i, "conv1.weight", (0, 0, 1, 1), 30, "bitflip") for i in range(3)]
    Injector(tiny_resnet, Images(x, y, []), batch_size=6).run(faults)
    assert before.same_as_before()


@pytest.mark.parametrize(
    "cfg",
    [
        {"arch": "smallnet", "activation": "relu6", "order": "act-bn", "nan_filter": True, "shortcut": "conv"},
        {"arch": "smallnet", "activation": "gelu6", "shortcut": "pad", "width": 8},
    ],
)
def test_exact_on_the_projects_hardened_models(cfg, tiny_images):
    """Bounded activations, order inversion, NaN filters, both shortcuts: still bit-identical to naive."""
    from diehardlab.hardening.models import ModelConfig, build_model

    from .conftest import randomise_bn

    torch.manual_seed(3)
    model = build_model(ModelConfig(**cfg), 3, 10)
    randomise_bn(model, torch.Generator().manual_seed(4))
    model.eval()
    x, y = tiny_images
    faults = draw(make_plan(model, "network", error=0.1, fault_model="bitflip"), seed=1)[:100]
    faults += [Fault(500 + b, "stem.conv.weight", (1, 2, 1, 1), b, "bitflip") for b in (23, 29, 30, 31)]
    got = Injector(model, Images(x, y, []), batch_size=7).run(faults)
    np.testing.assert_array_equal(got, naive_outcomes(model, x, faults))
