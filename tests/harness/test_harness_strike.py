"""Strikes inside the network (diehardlab.harness.strike) and the simulated beam that uses them.

The truth of a strike is the simulator's own comparison of the iteration's outputs with the golden ones; the
runner measures the same iteration independently (its #SDC records, critical or not). They must agree.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from diehardlab.hardening.checkpoint import load_model
from diehardlab.hardening.models import ModelConfig, build_model
from diehardlab.harness.beam import StrikeModel
from diehardlab.harness.strike import NetworkStrikes, cached_calibration, judge, save_calibration

from diehardlab.formats.parser import summarize
from tests.harness.conftest import only_log, start_diehard

pytestmark = pytest.mark.timeout(120)


def _setup(model: torch.nn.Module, **strike) -> tuple[NetworkStrikes, list[torch.Tensor], list[torch.Tensor]]:
    torch.manual_seed(3)
    x = torch.randn(16, 1, 8, 8)
    batches = [x[:8], x[8:]]
    with torch.no_grad():
        clean = [model(b) for b in batches]
    return NetworkStrikes(StrikeModel(**strike), model, x, torch.Generator().manual_seed(4)), batches, clean


def test_a_weight_bit_strike_lasts_one_iteration(ckpt) -> None:
    model = load_model(ckpt).model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ns, batches, clean = _setup(model, single=0, block=0, weight_bit=1, bits=(30, 30))
    s = ns.draw([8, 8])
    assert s.target == "weight_bit" and s.bit == 30 and s.layer in dict(ns.params)
    outs = ns.apply([s], model, batches, clean)
    assert all(not torch.equal(o, c) for o, c in zip(outs, clean))  # a weight reaches every image
    after = model.state_dict()
    assert all(torch.equal(before[k].view(-1).view(torch.uint8), after[k].view(-1).view(torch.uint8)) for k in before)
    with torch.no_grad():
        assert all(torch.equal(model(b), c) for b, c in zip(batches, clean))


def test_a_feature_map_strike_reaches_only_its_image(ckpt) -> None:
    model = load_model(ckpt).model
    ns, batches, clean = _setup(model, single=0, block=1, weight_bit=0, value="nan")
    s = ns.draw([8, 8])
    outs = ns.apply([s], model, batches, clean)
    other = 1 - s.batch
    assert outs[other] is clean[other]  # the other batch is not even run again
    rows = torch.arange(8) != s.img
    assert torch.equal(outs[s.batch][rows], clean[s.batch][rows])
    assert s.elements > 0 and not torch.isfinite(outs[s.batch][s.img]).all()
    hit = judge(outs, clean, 1e-3, {s.batch: [s.img]})
    assert hit.differs and hit.critical and hit.images == 1
    assert not judge(outs, clean, 1e-3, {other: None}).differs


def test_the_calibration_measures_what_the_network_masks() -> None:
    """A NaN in a conv output always reaches a plain ReLU net's output; a NaN filter stops it."""
    torch.manual_seed(0)
    plain = build_model(ModelConfig(arch="smallnet", width=8), 1, 10).eval()
    filtered = build_model(ModelConfig(arch="smallnet", width=8, activation="relu6", nan_filter=True), 1, 10).eval()
    spec = {"single": 1, "block": 0, "weight_bit": 0, "value": "nan", "calibration_strikes": 48}
    results = []
    for model in (plain, filtered):
        ns, batches, clean = _setup(model, **spec)
        cal = ns.calibrate(model, batches, clean, 1e-3, torch.Generator().manual_seed(0))
        assert cal.counts["single"]["n"] == 48  # 3 rounds of one strike per image
        results.append((cal.probability("sdc"), cal.probability("critical")))
    assert results[0] == (1.0, 1.0)
    assert results[1][1] < 0.5


def test_the_runner_and_the_truth_agree_on_every_strike(ckpt, golden, tmp_path: Path) -> None:
    spec = tmp_path / "strike.toml"
    spec.write_text(
        "seed = 8\n[beam]\nflux_n_cm2_s = 1e6\nflux_factor = 1e5\nrow_interval_s = 0.5\n"
        "[cross_section_cm2]\nstrike = 5e-6\n"  # 5 strikes per second of kernel time
        "[strike]\nsingle = 1.0\nblock = 1.0\nweight_bit = 1.0\ncalibration_strikes = 16\n"
    )
    logs = tmp_path / "logs"
    proc = start_diehard("run", str(ckpt), "--golden", str(golden), "--log-dir", str(logs), "--hostname", "dut1",
                         "--simulate-beam", str(spec), "--duration", "3", "--interval", "1000",
                         "--no-double-error-kill")  # fmt: skip
    _, err = proc.communicate(timeout=90)
    assert proc.returncode == 0, err
    log = only_log(logs)
    truth = json.loads(Path(str(log) + ".truth.json").read_text())
    cal = truth["strike_calibration"]
    assert truth["true_sigma_cm2"]["sdc_critical"] == pytest.approx(5e-6 * cal["p_critical"])
    assert truth["true_sigma_cm2"]["sdc"] == pytest.approx(5e-6 * cal["p_sdc"])
    assert {t: c["n"] for t, c in cal["counts"].items()} == {"single": 16, "block": 16, "weight_bit": 16}
    strikes = [e for e in truth["events"] if e["kind"] == "strike"]
    assert len(strikes) >= 5 and all(e["observed"] in ("sdc", "masked") for e in strikes)
    assert {e["strike"]["target"] for e in strikes} <= {"single", "block", "weight_bit"}
    sdc = {r.iteration: r for r in summarize(log).sdc}
    hit = {}
    for e in strikes:
        if e["observed"] == "sdc":
            hit[e["sdc_ite"]] = hit.get(e["sdc_ite"], False) or e["critical"]
    assert set(sdc) == set(hit)  # the runner saw an SDC exactly in the iterations the truth says changed
    assert {i: r.critical for i, r in sdc.items()} == hit  # and called it critical exactly when top-1 changed


def test_a_cached_calibration_is_reused_only_when_whole(tmp_path: Path) -> None:
    key = "ab" * 32
    doc = {"p_sdc": 0.25, "p_critical": 0.125, "counts": {}, "weights": {}, "key": key, "seconds": 1.0}
    save_calibration(tmp_path, doc)
    assert cached_calibration(tmp_path, key) == doc
    assert cached_calibration(tmp_path, "cd" * 32) is None  # another model or spec
    path = next(tmp_path.glob(".strike-calibration-*.json"))
    # Damaged or foreign files are measured again, never a traceback or a NaN cross section in the truth file.
    for text in (json.dumps({"key": key}), json.dumps({**doc, "p_sdc": "nan"}), json.dumps({**doc, "p_sdc": math.nan}),
                 json.dumps({**doc, "p_critical": 2.0}), "[1, 2]", "{trunc"):  # fmt: skip
        path.write_text(text)
        assert cached_calibration(tmp_path, key) is None, text
    path.write_bytes(b"\xff\xfe\x00garbage")
    assert cached_calibration(tmp_path, key) is None
