"""Sample sizes (published ResNet-20 numbers), data-aware p(i), fault-list draws and the CSV format."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diehardlab.hardening.models import ModelConfig, build_model
from diehardlab.hardening.sfi import faultlist
from diehardlab.hardening.sfi.plan import bit_change_stats, data_aware_p, make_plan
from torch import nn

from diehardlab.errors import ConfigError, DataError
from tests.conftest import run_diehard


@pytest.fixture(scope="module")
def resnet20_pad() -> nn.Module:
    torch.manual_seed(0)
    return build_model(ModelConfig(arch="resnet20", shortcut="pad"), 3, 10).eval()


def test_published_resnet20_sizes(resnet20_pad):
    net = make_plan(resnet20_pad, "network")
    assert net.population == 17_174_144
    assert sum(x.numel for x in net.layers) == 268_346
    assert net.total == 16_625
    assert len(net.layers) == 20  # 19 convs and the linear layer: the parameter-free shortcut
    layer = make_plan(resnet20_pad, "layer")
    assert layer.layers[0].numel == 432
    assert layer.per_layer()[0] == ("stem.conv", 27_648, 10_389)
    unaware = make_plan(resnet20_pad, "data-unaware")
    assert unaware.per_layer()[0] == ("stem.conv", 27_648, 26_272)
    assert {s.n for s in unaware.strata if s.layer == "stem.conv"} == {821}


def test_plan_cli_prints_published_numbers():
    r = run_diehard("sfi", "plan", "--model", "resnet20", "--method", "layer")
    assert r.returncode == 0, r.stderr
    assert "stem.conv" in r.stdout and "27,648" in r.stdout and "10,389" in r.stdout
    assert "17,174,144" in r.stdout


def test_data_aware_p_from_weights(resnet20_pad):
    plan = make_plan(resnet20_pad, "data-aware")
    p = np.array(plan.p_table["stem.conv"])
    assert p.shape == (32,) and p.min() >= 0 and p.max() <= 0.5
    assert p[30] == 0.5  # exponent MSB: flips to huge values, an outlier
    assert p[0] < 1e-3  # the lowest mantissa bit barely changes a weight
    assert all(p[i] <= p[i + 1] for i in range(0, 20))  # mantissa bits: more significant, larger change
    unaware = make_plan(resnet20_pad, "data-unaware")
    assert plan.total < unaware.total


def test_bit_change_stats_known_values():
    w = torch.tensor([1.0, -1.0, 0.5, 0.25])
    d = bit_change_stats(w)
    # sign bit: |w - (-w)| = 2|w| for every weight, all weights have f0 or f1 contributions
    assert d[31] == pytest.approx(np.mean([2.0, 2.0, 1.0, 0.5]))
    assert np.isfinite(d[:30]).all()
    p = data_aware_p(np.array([1.0, 2.0, 3.0, np.inf]))
    assert p.tolist() == [0.0, 0.25, 0.5, 0.5]


def test_bad_options_are_named(resnet20_pad):
    with pytest.raises(ConfigError, match="--method"):
        make_plan(resnet20_pad, "bitwise")
    with pytest.raises(ConfigError, match="--error"):
        make_plan(resnet20_pad, "network", error=2)
    with pytest.raises(ConfigError, match="data-aware"):
        make_plan(resnet20_pad, "data-aware", target="activations", example=torch.zeros(1, 3, 32, 32))


def test_draw_is_seeded_unique_and_in_range(resnet20_pad, tmp_path):
    plan = make_plan(resnet20_pad, "data-unaware", error=0.2)
    a, b = faultlist.draw(plan, 7), faultlist.draw(plan, 7)
    assert a == b and faultlist.draw(plan, 8) != a
    assert len(a) == plan.total
    keys = {(f.tensor, f.index, f.bit, f.model) for f in a}
    assert len(keys) == len(a)  # without replacement
    params = dict(resnet20_pad.named_parameters())
    for f in a[:: max(1, len(a) // 500)]:
        assert all(0 <= i < s for i, s in zip(f.index, params[f.tensor].shape))
        assert f.model in ("stuck-at-0", "stuck-at-1") and f.stratum.endswith(f"/{f.bit}")
    # per (layer, bit) counts are the plan's
    counts: dict[tuple[str, int], int] = {}
    for f in a:
        counts[f.module, f.bit] = counts.get((f.module, f.bit), 0) + 1
    assert all(counts.get((s.layer, s.bit), 0) == s.n for s in plan.strata)
    path = tmp_path / "faults.csv"
    faultlist.write_csv(a, path)
    assert faultlist.read_csv(path) == a
    first = path.read_text().splitlines()[:2]
    # the suite's first three columns, the bit last (SFIadvancedmodels reads the last column as the bit)
    assert first[0].startswith("Injection,Layer,TensorIndex,") and first[0].endswith(",Bit")
    assert first[1].count('"(') == 1  # the index is quoted "(k, c, h, w)" as SFIadvancedmodels writes it


def test_reads_plain_sfiadvancedmodels_list(tmp_path):
    path = tmp_path / "list.csv"
    path.write_text('Injection,Layer,TensorIndex,Bit\n0,layer1.0.conv1.weight,"(3, 0, 2, 1)",30\n')
    (f,) = faultlist.read_csv(path)
    assert (f.tensor, f.index, f.bit, f.model) == ("layer1.0.conv1.weight", (3, 0, 2, 1), 30, "bitflip")
    path.write_text('Injection,Layer,TensorIndex,Bit\n0,conv1.weight,"(0, 0)",40\n')
    with pytest.raises(DataError, match=r"list.csv: line 2: column Bit"):
        faultlist.read_csv(path)
    path.write_text("Injection,Layer,Bit\n")
    with pytest.raises(DataError, match="TensorIndex"):
        faultlist.read_csv(path)
