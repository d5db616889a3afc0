"""Fault masks have the right shapes and counts per fault model; corruption is seeded and vectorised."""

from __future__ import annotations

import math

import pytest
import torch
from diehardlab.hardening.faults import BASE_KINDS, FaultInjector, FaultSpec, corrupt, curriculum_scale, fault_mask
from diehardlab.hardening.models import ModelConfig, build_model, conv_layers

from diehardlab.errors import ConfigError

N, C, H, W = 64, 8, 10, 12


def _mask(kind: str, seed: int = 0, **kw) -> torch.Tensor:
    spec = FaultSpec(kind=kind, **kw)
    mask, _ = fault_mask((N, C, H, W), spec, torch.Generator().manual_seed(seed), torch.device("cpu"))
    assert mask.shape == (N, C, H, W) and mask.dtype == torch.bool
    return mask


def test_single_is_one_value_per_image_anywhere():
    mask = _mask("single")
    assert (mask.sum(dim=(1, 2, 3)) == 1).all()
    pos = mask.nonzero()
    # The reference always hit the diagonal (row == column); positions must be independent.
    assert (pos[:, 2] != pos[:, 3]).sum() > N // 2
    assert len(set(pos[:, 1].tolist())) > 1


def test_line_is_one_row_or_column_of_one_channel():
    mask = _mask("line")
    counts = mask.sum(dim=(1, 2, 3))
    assert set(counts.tolist()) <= {H, W}
    assert {H, W} <= set(counts.tolist())  # both orientations occur
    assert ((mask.sum(dim=(2, 3)) > 0).sum(dim=1) == 1).all()  # one channel


def test_block_is_a_rectangle_in_selected_channels():
    mask = _mask("block", block_channel_p=0.5, block_max_frac=0.5)
    for n in range(N):
        chans = mask[n].any(dim=(1, 2)).nonzero().flatten()
        assert len(chans) >= 1
        rows = mask[n].any(dim=(0, 2)).nonzero().flatten()
        cols = mask[n].any(dim=(0, 1)).nonzero().flatten()
        h = int(rows.max() - rows.min() + 1)
        w = int(cols.max() - cols.min() + 1)
        assert h <= math.ceil(0.5 * H) and w <= math.ceil(0.5 * W)
        assert len(rows) == h and len(cols) == w
        # Same rectangle in every selected channel.
        assert int(mask[n].sum()) == len(chans) * h * w
    per_image_channels = mask.any(dim=(2, 3)).sum(dim=1).float()
    assert 2.5 < per_image_channels.mean() < 6.5  # about 1 + 0.5 * 7


def test_block_channel_probability_zero_and_one():
    assert (_mask("block", block_channel_p=0.0).any(dim=(2, 3)).sum(dim=1) == 1).all()
    assert (_mask("block", block_channel_p=1.0).any(dim=(2, 3)).sum(dim=1) == C).all()


def test_channel_is_one_whole_channel():
    mask = _mask("channel")
    assert (mask.sum(dim=(1, 2, 3)) == H * W).all()
    assert ((mask.sum(dim=(2, 3)) > 0).sum(dim=1) == 1).all()


def test_mix_draws_every_kind():
    spec = FaultSpec(kind="mix")
    _, kinds = fault_mask((N, C, H, W), spec, torch.Generator().manual_seed(1), torch.device("cpu"))
    assert set(kinds.tolist()) == set(range(len(BASE_KINDS)))


def test_corrupt_magnitude_sign_select_and_seed():
    out = torch.rand(N, C, H, W) + 1.0  # all positive, nonzero
    select = torch.arange(N) % 2 == 0
    spec = FaultSpec(kind="block", magnitude=(2.0, 4.0))
    a, mask = corrupt(out, spec, torch.Generator().manual_seed(5), select)
    b, mask_b = corrupt(out, spec, torch.Generator().manual_seed(5), select)
    assert torch.equal(a, b) and torch.equal(mask, mask_b)
    assert not mask[~select].any() and mask[select].any()
    assert torch.equal(a[~mask], out[~mask])
    ratio = (a[mask] / out[mask]).abs()
    assert ratio.min() >= 2.0 - 1e-5 and ratio.max() <= 4.0 + 1e-5
    signs = torch.sign(a[mask])
    assert (signs < 0).any() and (signs > 0).any()
    c, _ = corrupt(out, spec, torch.Generator().manual_seed(6), select)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_corrupt_nan_inf(value):
    out = torch.randn(4, 3, 5, 5)
    bad, mask = corrupt(out, FaultSpec(kind="line", value=value), torch.Generator().manual_seed(0))
    check = torch.isnan if value == "nan" else torch.isinf
    assert torch.equal(check(bad), mask)


def test_corrupt_linear_output():
    out = torch.randn(6, 10)
    _bad, mask = corrupt(out, FaultSpec(kind="single"), torch.Generator().manual_seed(0))
    assert mask.shape == (6, 10) and (mask.sum(dim=1) == 1).all()


def test_injector_one_layer_per_forward_and_per_image():
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="smallnet"), 1, 10).eval()
    x = torch.randn(32, 1, 8, 8)
    clean = model(x)
    layers = conv_layers(model)
    spec = FaultSpec(kind="single", p=1.0)
    with FaultInjector(model, spec, torch.Generator().manual_seed(0)) as inj:
        inj.record = True
        model(x)
        assert len(set(inj.last["layer"].tolist())) == 1
        assert len(inj.last["masks"]) == 1 and int(inj.last["masks"][0][1].sum()) == 32
    assert torch.equal(model(x), clean)  # detached: no hook left
    spec = FaultSpec(kind="single", p=1.0, layer_choice="per-image")
    with FaultInjector(model, spec, torch.Generator().manual_seed(0)) as inj:
        inj.record = True
        model(x)
        assert len(set(inj.last["layer"].tolist())) > 1
        assert sum(int(m.sum()) for _, m in inj.last["masks"]) == 32  # exactly one fault per image
        assert {i for i, _ in inj.last["masks"]} == set(inj.last["layer"].tolist())
    spec = FaultSpec(kind="block", p=0.5, layer_weights=[0.0] * (len(layers) - 1) + [1.0])
    with FaultInjector(model, spec, torch.Generator().manual_seed(0)) as inj:
        model(x)
        chosen = inj.last["layer"]
        assert set(chosen.tolist()) <= {-1, len(layers) - 1}
        assert 4 < int((chosen >= 0).sum()) < 28


def test_injector_seeded_identity():
    model = build_model(ModelConfig(arch="smallnet"), 1, 10).eval()
    x = torch.randn(16, 1, 8, 8)
    outs = []
    for _ in range(2):
        with FaultInjector(model, FaultSpec(kind="mix"), torch.Generator().manual_seed(42)):
            outs.append(torch.stack([model(x) for _ in range(3)]))
    assert torch.equal(outs[0], outs[1])


def test_curriculum_is_linear():
    scales = [curriculum_scale(e, 11, start=0.0, end=1.0) for e in range(11)]
    assert scales == pytest.approx([e / 10 for e in range(11)])
    assert curriculum_scale(0, 1) == 1.0


def test_bad_spec_is_a_config_error():
    with pytest.raises(ConfigError, match="kind"):
        FaultSpec(kind="row")
    with pytest.raises(ConfigError, match="magnitude"):
        FaultSpec(magnitude=(5.0, 1.0))
    with pytest.raises(ConfigError, match="faults: knd: unknown key"):
        FaultSpec.from_dict({"knd": "block"})


def test_corrupt_keeps_the_memory_format_and_the_same_faults():
    out = torch.randn(8, 6, 5, 7)
    spec = FaultSpec(kind="mix", magnitude=(2.0, 3.0))
    a, ma = corrupt(out, spec, torch.Generator().manual_seed(9))
    cl = out.contiguous(memory_format=torch.channels_last)
    b, mb = corrupt(cl, spec, torch.Generator().manual_seed(9))
    assert b.is_contiguous(memory_format=torch.channels_last)
    assert mb.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(ma, mb) and torch.equal(a, b)
