"""``diehard sfi validate``: an exhaustive campaign on one layer of a digits model, samples scored against it."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from diehardlab.hardening.sfi.faultlist import draw
from diehardlab.hardening.sfi.plan import injectable_layers, make_plan
from diehardlab.hardening.sfi.validate import exhaustive_faults, layer_estimate, layer_plan

from diehardlab.cli import main
from tests.badinput.battery import check_refused
from tests.sfi.conftest import trained_digits_smallnet


@pytest.fixture(scope="module")
def digits_model(tmp_path_factory):
    """A real checkpoint (digits smallnet, width 4: its first layer has 36 weights, 2,304 stuck-at faults)."""
    return trained_digits_smallnet(tmp_path_factory.mktemp("ckpt"))


def test_exhaustive_list_is_the_layer_population(digits_model):
    _, model = digits_model
    layer = injectable_layers(model)[0]
    faults = exhaustive_faults(layer)
    assert len(faults) == layer.numel * 32 * 2 == 2304
    assert len({(f.tensor, f.index, f.bit, f.model) for f in faults}) == len(faults)
    # row i is population index i of the layer-wise draw: element-major, then bit, then value
    where = {(f.tensor, f.index, f.bit, f.model): i for i, f in enumerate(faults)}
    plan = layer_plan(make_plan(model, "layer", error=0.2), layer)
    drawn = draw(plan, 3)
    rng = np.random.default_rng(3)
    picks = np.sort(rng.choice(plan.strata[0].population, plan.strata[0].n, replace=False))
    assert [where[(f.tensor, f.index, f.bit, f.model)] for f in drawn] == picks.tolist()


def test_layer_estimate_keeps_unsampled_strata(digits_model):
    """Data-aware bits sized to no fault count with rate 0: the estimate is not inflated by N / N_sampled."""
    _, model = digits_model
    layer = injectable_layers(model)[0]
    plan = layer_plan(make_plan(model, "data-aware"), layer)
    assert any(s.n == 0 for s in plan.strata)
    faults = draw(plan, 0)
    hit = np.array([f.bit == 30 for f in faults])  # only exponent-MSB faults critical
    p, margin, margin05 = layer_estimate(plan, layer, faults, hit)
    assert p == pytest.approx(1 / 32)  # one bit of 32, whichever strata were sampled
    assert margin == 0.0 and margin05 > 0


def test_validate_on_a_digits_layer(digits_model, tmp_path, capsys):
    ckpt, _ = digits_model
    out = tmp_path / "val"
    args = ["sfi", "validate", str(ckpt), "--images", "6", "--samples", "3", "--threads", "1", "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "2,304 faults x 6 images" in printed
    doc = json.loads((out / "validate.json").read_text())
    outcomes = np.load(out / "exhaustive" / "outcomes.npy")
    assert outcomes.shape == (2304, 6) and np.load(out / "exhaustive" / "done.npy").all()
    rate = float((outcomes.max(axis=1) == 2).mean())
    assert doc["exhaustive"]["critical_rate"] == rate and 0 < rate < 1
    rows = list(csv.DictReader((out / "samples.csv").open()))
    assert [r["method"] for r in rows] == [m for m in ("network", "layer", "data-unaware", "data-aware") for _ in "abc"]
    assert [int(r["seed"]) for r in rows[:3]] == [0, 1, 2]
    for r in rows:
        est, m = float(r["estimate"]), float(r["margin"])
        assert (r["inside"] == "True") == (abs(est - rate) <= m + 1e-12)
    # the data-unaware sample of a 72-fault stratum is the stratum (n rounds to N): exact, zero margin
    unaware = [r for r in rows if r["method"] == "data-unaware"]
    assert all(int(r["faults"]) == 2304 and float(r["estimate"]) == pytest.approx(rate) for r in unaware)
    summary = doc["methods"]
    for m in summary:
        assert summary[m]["contain"] == sum(r["inside"] == "True" for r in rows if r["method"] == m)
    assert doc["config"]["seeds"]["layer"] == [0, 1, 2] and doc["versions"]["torch"] == torch.__version__
    # a sample's rows hold its outcomes: injecting its faults again gives the same critical count
    rows_npz = np.load(out / "sample_rows.npz")
    layer_rows = rows_npz["layer/0"]
    assert len(layer_rows) == int(rows[3]["faults"])
    assert int(rows[3]["critical"]) == int((outcomes[layer_rows].max(axis=1) == 2).sum())
    # again: the finished exhaustive campaign is resumed, not run a second time
    assert main(args) == 0
    capsys.readouterr()
    assert json.loads((out / "exhaustive" / "summary.json").read_text())["resumed_from"] == 2304


def test_validate_refuses_bad_input(digits_model, tmp_path, capsys):
    ckpt, _ = digits_model
    out = tmp_path / "val"
    # one in a fresh process: one line, no traceback, nothing written
    check_refused(
        "sfi", "validate", str(ckpt), "--images", "4", "--layer", "nolayer", "--out", str(out),
        names=["--layer", "nolayer", "0=stem.conv"], outputs=[out / "validate.json", out / "exhaustive" / "run.json"],
    )  # fmt: skip
    f = tmp_path / "file"
    f.write_text("keep")
    for extra, word in (
        (["--samples", "0", "--out", str(out)], "--samples"),
        (["--methods", "layer,bitwise", "--out", str(out)], "bitwise"),
        (["--out", str(f)], "is a file"),
    ):
        assert main(["sfi", "validate", str(ckpt), "--images", "4", *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and word in err[0], err
    assert not out.exists() and f.read_text() == "keep"
