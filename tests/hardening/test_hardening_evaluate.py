"""Regret evaluation: JSON keys, arithmetic, reproducibility, the fault list, and the commands end to end."""

from __future__ import annotations

import csv
import json
from dataclasses import replace

import pytest
from diehardlab.hardening.evaluate import evaluate_checkpoint
from diehardlab.hardening.faults import FaultSpec
from diehardlab.hardening.models import ModelConfig
from diehardlab.hardening.train import TrainConfig, train

from diehardlab.errors import ConfigError
from tests.conftest import ROOT, run_diehard

KEYS = ("clean_accuracy", "faulty_accuracy_mean", "regret_mean", "regret_std", "critical_rate", "tolerable_rate")


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    base = TrainConfig(
        name="eval_base",
        dataset="digits",
        train_limit=640,
        epochs=3,
        batch_size=64,
        lr=0.1,
        device="cpu",
        model=ModelConfig(arch="smallnet", width=8),
    )
    hard = replace(
        base,
        name="eval_hard",
        fault_aware=True,
        bn_recalibrate=256,
        model=ModelConfig(arch="smallnet", width=8, activation="relu6", order="act-bn", nan_filter=True),
    )
    root = tmp_path_factory.mktemp("ckpt")
    for cfg in (base, hard):
        train(cfg, root / cfg.name, log=lambda *a, **k: None)
    return root


def test_result_keys_and_arithmetic(ckpts, tmp_path):
    res = evaluate_checkpoint(
        ckpts / "eval_base", FaultSpec(kind="block"), campaigns=3, limit=200, fault_list=tmp_path / "faults.csv"
    )
    for key in KEYS:
        assert 0.0 <= res[key] <= 1.0 or key == "regret_mean"
    camps = res["campaigns"]
    assert len(camps) == 3 and [c["seed"] for c in camps] == [0, 1, 2]
    for c in camps:
        assert c["regret"] == pytest.approx(res["clean_accuracy"] - c["faulty_accuracy"])
        assert c["critical_rate"] + c["tolerable_rate"] + c["masked_rate"] == pytest.approx(1.0)
    assert res["regret_mean"] == pytest.approx(res["clean_accuracy"] - res["faulty_accuracy_mean"])
    conf = res["configuration"]
    assert conf["fault_spec"]["kind"] == "block" and conf["images"] == 200 and len(conf["layers"]) == 6
    assert len(conf["model_hash"]) == 64
    with open(tmp_path / "faults.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 * 200
    assert all(int(r["corrupted_elements"]) >= 1 for r in rows)  # exactly one fault per image, never empty
    assert len({r["layer_name"] for r in rows}) == 6  # every layer drawn
    # Same seeds, same result; other seeds, other faults.
    again = evaluate_checkpoint(ckpts / "eval_base", FaultSpec(kind="block"), campaigns=3, limit=200)
    assert again["campaigns"] == camps
    other = evaluate_checkpoint(ckpts / "eval_base", FaultSpec(kind="block"), campaigns=3, limit=200, seed=10)
    assert other["campaigns"] != camps


def test_nan_faults_and_the_nan_filter(ckpts):
    spec = FaultSpec(kind="single", value="nan")
    plain = evaluate_checkpoint(ckpts / "eval_base", spec, campaigns=1, limit=100)
    hard = evaluate_checkpoint(ckpts / "eval_hard", spec, campaigns=1, limit=100)
    assert plain["nonfinite_rate"] == 1.0 and plain["critical_rate"] == 1.0
    assert hard["nonfinite_rate"] == 0.0


def test_bad_options(ckpts):
    with pytest.raises(ConfigError, match="campaigns"):
        evaluate_checkpoint(ckpts / "eval_base", FaultSpec(), campaigns=0)


def test_train_and_evaluate_commands(tmp_path, ckpts):
    out = tmp_path / "cli"
    r = run_diehard(
        "train",
        "--config",
        str(ROOT / "setups/models/digits_baseline.toml"),
        "--epochs",
        "1",
        "--train-limit",
        "128",
        "--threads",
        "1",
        "--out",
        str(out),
        "--no-progress",
    )
    assert r.returncode == 0, r.stderr
    assert "test accuracy" in r.stdout
    assert {p.name for p in out.iterdir()} >= {"config.json", "model.pt", "last.pt", "metrics.csv"}
    js = tmp_path / "e.json"
    r = run_diehard(
        "evaluate",
        str(ckpts / "eval_hard"),
        "--fault-model",
        "block",
        "--campaigns",
        "2",
        "--limit",
        "100",
        "--threads",
        "1",
        "--json",
        str(js),
    )
    assert r.returncode == 0, r.stderr
    assert "regret" in r.stdout
    first = json.loads(js.read_text())
    assert all(k in first for k in KEYS)
    js2 = tmp_path / "e2.json"
    r = run_diehard("evaluate", str(ckpts / "eval_hard"), "--reproduce", str(js), "--threads", "1", "--json", str(js2))
    assert r.returncode == 0, r.stderr
    assert json.loads(js2.read_text())["campaigns"] == first["campaigns"]
    r = run_diehard("evaluate", str(tmp_path / "nowhere"))
    assert r.returncode == 2 and "not a checkpoint folder" in r.stderr
    r = run_diehard("train", "--config", str(tmp_path / "missing.toml"))
    assert r.returncode == 2 and "no such file" in r.stderr
