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


def test_p_scope_network_is_the_papers(resnet20_pad):
    """f0, f1, D_avg over all the network's weights: one p(i) for every layer, one size per layer size."""
    net = make_plan(resnet20_pad, "data-aware", p_scope="network")
    per_layer = make_plan(resnet20_pad, "data-aware")
    assert net.p_scope == "network" and list(net.bit_stats) == ["*"]
    assert all(p == net.bit_stats["*"]["p"] for p in net.p_table.values())
    sizes: dict[int, set[int]] = {}
    for _name, pop, n in net.per_layer():
        sizes.setdefault(pop, set()).add(n)
    assert all(len(v) == 1 for v in sizes.values())  # equal-sized layers: the same data-aware sample (Table I)
    assert len({n for _, pop, n in per_layer.per_layer() if pop == 147_456}) > 1  # per-layer scope: they differ
    # the network's statistics are those of the concatenated weights
    from diehardlab.hardening.sfi.plan import bit_stats, layer_values

    allw = torch.cat([layer_values(resnet20_pad, x) for x in net.layers])
    assert net.bit_stats["*"]["d_avg"] == pytest.approx(bit_stats(allw)["d_avg"].tolist())
    f0, f1 = np.array(net.bit_stats["*"]["f0"]), np.array(net.bit_stats["*"]["f1"])
    assert np.allclose(f0 + f1, 1) and f1[30] == pytest.approx(float((allw.abs() >= 2).float().mean()))
    back = type(net).from_json(net.to_json())
    assert back.p_scope == "network" and back.bit_stats == net.bit_stats and back.total == net.total
    with pytest.raises(ConfigError, match="--p-scope"):
        make_plan(resnet20_pad, "layer", p_scope="network")
    with pytest.raises(ConfigError, match="--p-scope"):
        make_plan(resnet20_pad, "data-aware", p_scope="bit")


def test_width_follows_the_stored_format():
    """Populations and per-bit strata from the tensor's own width: a float16 model has 16 bits per weight."""
    torch.manual_seed(0)
    half = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)).half()
    plan = make_plan(half, "data-aware")
    assert [(x.width, x.dtype) for x in plan.layers] == [(16, "float16"), (16, "float16")]
    assert plan.population == (40 + 435) * 16 * 2
    assert sorted({s.bit for s in plan.strata}) == list(range(16))
    net = make_plan(half, "network")
    assert net.strata[0].population == plan.population
    faults = faultlist.draw(make_plan(half, "layer", error=0.05), 0)
    assert faults and max(f.bit for f in faults) < 16
    w = torch.tensor([1.0, -0.5, 2.0], dtype=torch.float16)
    from diehardlab.hardening.sfi.plan import bit_stats

    st = bit_stats(w)
    assert len(st["d_avg"]) == 16
    assert st["d_avg"][15] == pytest.approx(np.mean([2.0, 1.0, 4.0]))  # the sign bit: |w - (-w)| = 2|w|
    assert st["f1"][15] == pytest.approx(1 / 3)
    # float16 1.0 = 0x3C00: the lowest mantissa bit adds 2^-10 to it
    one = bit_stats(torch.tensor([1.0], dtype=torch.float16))
    assert one["d01"][0] == pytest.approx(2**-10) and one["f0"][0] == 1.0
    assert bit_stats(torch.tensor([1.0]))["d01"][0] == pytest.approx(2**-23)  # float32: 32 bits, 2^-23
    mixed = nn.Sequential(nn.Linear(4, 4).half(), nn.Linear(4, 2).to(torch.bfloat16))
    assert make_plan(mixed, "data-aware").population == (20 + 10) * 16 * 2
    with pytest.raises(ConfigError, match=r"float16 \(first: 0\), bfloat16 \(first: 1\)"):
        make_plan(mixed, "data-aware", p_scope="network")  # one set of per-bit statistics needs one format


def test_plan_cli_exports_p_per_bit(tmp_path):
    csv_path, png = tmp_path / "p.csv", tmp_path / "p.png"
    r = run_diehard(
        "sfi", "plan", "--model", "resnet20", "--method", "data-aware", "--p-scope", "network",
        "--p-csv", str(csv_path), "--p-plot", str(png),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "over all the network's weights" in r.stdout
    rows = list(__import__("csv").DictReader(csv_path.open()))
    assert [int(x["bit"]) for x in rows] == list(range(32)) and {x["scope"] for x in rows} == {"*"}
    assert float(rows[31]["p"]) == 0.5 and float(rows[0]["p"]) == 0.0
    assert png.read_bytes()[:4] == b"\x89PNG"
    bad = run_diehard("sfi", "plan", "--model", "resnet20", "--method", "layer", "--p-csv", str(tmp_path / "x.csv"))
    assert bad.returncode != 0 and "Traceback" not in bad.stderr and "--p-csv" in bad.stderr
    assert not (tmp_path / "x.csv").exists()
