"""``diehard harden`` and ``diehard train --from``: a hardened checkpoint is an ordinary checkpoint folder.

A tiny digits baseline is trained once; it is hardened, loaded back, fine-tuned and resumed, and the commands
that take a checkpoint (golden, run --once, evaluate, sfi run) run on the hardened one.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diehardlab.hardening.checkpoint import load_model, save_config, save_model
from diehardlab.hardening.cli_train import main as train_main
from diehardlab.hardening.evaluate import evaluate_checkpoint
from diehardlab.hardening.faults import FaultSpec
from diehardlab.hardening.harden import main as harden_main
from diehardlab.hardening.models import BoundedReLU, ModelConfig, NanFilter
from diehardlab.hardening.rewrite import sites_of
from diehardlab.hardening.train import TrainConfig, train
from torch import fx

from diehardlab.errors import ConfigError
from tests.badinput.battery import check_refused
from tests.badinput.disks import full_folder, readonly_folder

QUIET = ["--threads", "1", "--calibration-images", "256", "--device", "cpu"]


@pytest.fixture(scope="module")
def baseline(tmp_path_factory) -> Path:
    torch.set_num_threads(1)
    cfg = TrainConfig(name="tiny_baseline", dataset="digits", train_limit=320, epochs=2, batch_size=64, lr=0.1,
                      eval_batch_size=512, device="cpu", model=ModelConfig(arch="smallnet", width=8))  # fmt: skip
    out = tmp_path_factory.mktemp("harden") / "baseline"
    train(cfg, out, log=lambda *a, **k: None)
    return out


@pytest.fixture(scope="module")
def bounded(baseline, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bounded") / "bounds-only"
    assert harden_main([str(baseline), "--recipe", "bounds-only", "--out", str(out), *QUIET]) == 0
    return out


def test_bounds_only_writes_a_checkpoint_that_loads_back_hardened(baseline, bounded, capsys) -> None:
    assert {p.name for p in bounded.iterdir()} == {"config.json", "model.pt", "hardening.txt"}
    cfg = json.loads((bounded / "config.json").read_text())
    h = cfg["hardening"]
    assert h["recipe"]["name"] == "bounds-only" and h["source"]["checkpoint"] == str(baseline)
    assert set(h["bounds"]) == {"stem_act", "blocks_0_unit1_act", "blocks_0_act", "blocks_1_unit1_act", "blocks_1_act"}
    assert h["clean"]["within_budget"] and h["clean"]["images"] == 359 and h["calibration"]["images"] == 256
    assert "train split of digits" in h["calibration"]["from"] and "test split" in h["clean"]["measured_on"]
    report = (bounded / "hardening.txt").read_text()
    assert "stem_act" in report and "clamp(x, 0, b)" in report and "NaN filter on the input of fc" in report

    loaded = load_model(bounded)
    assert isinstance(loaded.model, fx.GraphModule)
    sites = sites_of(loaded.model)
    assert {n: m.bound for n, m in sites.items() if isinstance(m, BoundedReLU)} == h["bounds"]
    assert sum(isinstance(m, NanFilter) for m in sites.values()) == 6
    # Same weights, same keys as the original: a fault list written for the original applies as it is.
    original = load_model(baseline)
    assert loaded.model.state_dict().keys() == original.model.state_dict().keys()
    x = torch.randn(4, 1, 8, 8) * 100  # far outside the calibration range: the bounds bite
    with torch.no_grad():
        assert not torch.equal(loaded.model(x), original.model(x))


def test_a_hardened_checkpoint_runs_in_golden_run_evaluate_and_sfi(bounded, tmp_path, capsys) -> None:
    from diehardlab.hardening.sfi.cli import main as sfi_main
    from diehardlab.harness.cli_run import main as run_main
    from diehardlab.harness.golden import make_golden, save_golden

    golden = tmp_path / "golden.pt"
    save_golden(make_golden(bounded, samples=16, batch_size=8, device="cpu"), golden)
    out_bin = tmp_path / "out.bin"
    assert run_main([str(bounded), "--golden", str(golden), "--log-dir", str(tmp_path / "logs"), "--once",
                     "--output", str(out_bin), "--ecc", "off", "--device", "cpu", "--hostname", "h"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "result: MASKED errors:0" in out and out_bin.stat().st_size == 16 * 10 * 4
    log = next((tmp_path / "logs").glob("*.log")).read_text()
    assert "hardening:bounds-only" in log.splitlines()[0]

    res = evaluate_checkpoint(bounded, FaultSpec(kind="block"), campaigns=1, limit=64, device="cpu")
    recorded = json.loads((bounded / "config.json").read_text())["hardening"]["clean"]["accuracy_after"]
    full = evaluate_checkpoint(bounded, FaultSpec(kind="block"), campaigns=1, device="cpu")
    assert full["clean_accuracy"] == pytest.approx(recorded) and 0 <= res["regret_mean"] <= 1

    assert sfi_main(["run", str(bounded), "--method", "network", "--error", "0.2", "--max-faults", "8",
                     "--images", "8", "--out", str(tmp_path / "sfi"), "--device", "cpu"]) == 0  # fmt: skip
    assert any((tmp_path / "sfi").iterdir())


def test_order_inversion_is_refused_without_fine_tuning(baseline, tmp_path) -> None:
    out = tmp_path / "dhn"
    r = check_refused("harden", str(baseline), "--recipe", "diehardnet", "--out", str(out), "--threads", "1",
                      names=["--fine-tune", "diehardnet", "changes what the trained weights compute"],
                      outputs=[out])  # fmt: skip
    assert r.result.returncode == 2


def test_over_the_accuracy_budget_nothing_is_written_and_it_says_so_loudly(baseline, tmp_path, capsys) -> None:
    recipe = tmp_path / "tight.toml"
    recipe.write_text('name = "tight"\nbound = "percentile"\npercentile = 50.0\n')  # clips half of every activation
    out = tmp_path / "tight"
    with pytest.raises(ConfigError, match=r"budget 0\.5"):
        harden_main([str(baseline), "--recipe", str(recipe), "--out", str(out), "--accuracy-budget", "0.5", *QUIET])
    err = capsys.readouterr().err
    assert "ACCURACY BUDGET EXCEEDED" in err and f"NOTHING WAS WRITTEN TO {out}" in err
    assert not out.exists()
    kept = json.loads((tmp_path / "tight.over-budget" / "config.json").read_text())["hardening"]["clean"]
    assert not kept["within_budget"] and kept["cost_points"] > 0.5


def test_harden_with_fine_tuning_then_train_from_and_resume(baseline, tmp_path) -> None:
    dhn = tmp_path / "dhn"
    assert harden_main([str(baseline), "--recipe", "diehardnet", "--fine-tune", "1", "--out", str(dhn),
                        "--accuracy-budget", "100", *QUIET]) == 0  # fmt: skip
    cfg = json.loads((dhn / "config.json").read_text())
    assert cfg["fault_aware"] and cfg["epochs"] == 1 and cfg["fine_tune"]["from"] == str(baseline)
    assert cfg["lr"] == pytest.approx(0.05) and cfg["bn_recalibrate"] == 1024
    inverted = [c for c in cfg["hardening"]["changes"] if c["kind"] == "order" and c["action"] == "inverted"]
    assert len(inverted) == 3 and set(cfg["hardening"]["bounds"].values()) == {6.0}
    assert (dhn / "last.pt").is_file() and len((dhn / "metrics.csv").read_text().splitlines()) == 2

    # More fault-aware epochs from the hardened checkpoint, interrupted and resumed: still the hardened graph.
    ft = tmp_path / "ft"
    assert train_main(["--from", str(dhn), "--fine-tune", "--epochs", "2", "--stop-after", "1", "--out", str(ft),
                       "--no-progress", "--threads", "1"]) == 0  # fmt: skip
    assert train_main(["--resume", "--out", str(ft), "--no-progress", "--threads", "1"]) == 0
    cfg2 = json.loads((ft / "config.json").read_text())
    assert cfg2["fine_tune"]["previous"]["from"] == str(baseline) and cfg2["hardening"] == cfg["hardening"]
    loaded = load_model(ft)
    assert set(sites_of(loaded.model)) == set(sites_of(load_model(dhn).model))
    assert len((ft / "metrics.csv").read_text().splitlines()) == 3


def test_train_from_normalises_as_the_source_was_trained(baseline, tmp_path, capsys) -> None:
    """A digits model trained on training-split statistics keeps them, even under a recipe that asks for the
    suite's constants (digits has none: that recipe alone would be refused); other statistics are refused."""
    recipe = tmp_path / "recipe.toml"
    recipe.write_text('name = "r"\ndataset = "digits"\nbatch_size = 64\nnormalise_with = "suite"\n')
    out = tmp_path / "ft"
    common = ["--from", str(baseline), "--epochs", "1", "--train-limit", "128", "--no-progress", "--threads", "1"]
    assert train_main([*common, "--config", str(recipe), "--out", str(out)]) == 0
    assert "(train-split), not as" in capsys.readouterr().out
    source = json.loads((baseline / "config.json").read_text())["normalisation"]
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["normalisation"] == source and not source["fixed"] and cfg["normalise_with"] == "train-split"

    moved = tmp_path / "moved"
    moved.mkdir()
    for f in ("config.json", "model.pt"):
        (moved / f).write_bytes((baseline / f).read_bytes())
    other = json.loads((moved / "config.json").read_text())
    other["normalisation"]["mean"] = [v + 0.5 for v in other["normalisation"]["mean"]]
    (moved / "config.json").write_text(json.dumps(other))
    with pytest.raises(ConfigError, match=r"differ from those .*moved was trained with.*check --data-dir"):
        train_main(["--from", str(moved), "--epochs", "1", "--out", str(tmp_path / "ft2"), "--threads", "1"])


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--from", "BASE", "--out", "X"], "--epochs"),
        (["--fine-tune", "--epochs", "1", "--out", "X"], "--from"),
        (["--from", "BASE", "--epochs", "1"], "--out"),
        (["--from", "BASE", "--epochs", "1", "--out", "X", "--dataset", "mnist"], "--dataset"),
    ],
)
def test_train_from_refuses_what_it_cannot_do(baseline, tmp_path, capsys, argv, named) -> None:
    argv = [str(baseline) if a == "BASE" else str(tmp_path / "x") if a == "X" else a for a in argv]
    with pytest.raises(SystemExit) as e:
        train_main(argv)
    assert e.value.code == 2 and named in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_an_untraceable_checkpoint_model_is_refused_naming_the_construct(tmp_path) -> None:
    ckpt = tmp_path / "odd"
    save_config(ckpt, {"factory": "tests.hardening.zoo_like:Wrapper", "dataset": "digits", "in_channels": 1,
                       "num_classes": 10})  # fmt: skip
    from tests.hardening.zoo_like import Wrapper

    save_model(ckpt, Wrapper())
    assert load_model(ckpt).model.__class__.__name__ == "Wrapper"  # a factory checkpoint loads
    with pytest.raises(ConfigError, match=r"zoo_like\.py:\d+ in forward: 'if x\.mean\(\) > 0:' \(module inner\)"):
        harden_main([str(ckpt), "--recipe", "bounds-only", "--out", str(tmp_path / "h"), *QUIET])
    assert not (tmp_path / "h").exists()


def test_an_unwritable_out_is_one_line_naming_it(baseline, tmp_path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder\n")
    with pytest.raises(ConfigError, match=r"--out .*a-file/h: cannot write \(Not a directory\)"):
        harden_main([str(baseline), "--recipe", "bounds-only", "--out", str(blocker / "h"), *QUIET])
    assert blocker.read_text() == "not a folder\n"


def test_a_read_only_or_full_out_is_refused_before_the_checkpoint_is_read(tmp_path) -> None:
    # No checkpoint at all: the --out check comes first, so calibration and fine-tuning are not wasted on it.
    for folder in (readonly_folder, full_folder):
        with folder(tmp_path / folder.__name__) as where:
            with pytest.raises(ConfigError, match=r"^--out .*/h: cannot write \("):
                harden_main([str(tmp_path / "no-such-ckpt"), "--recipe", "bounds-only", "--out", str(where / "h"),
                             *QUIET])  # fmt: skip
            assert sorted(p.name for p in where.iterdir() if p.name != "filler") == []


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--threads", "-2"], r"--threads must be >= 0"),
        (["--fine-tune", "1", "--lr", "nan"], r"--lr must be a positive number \(got nan\)"),
        (["--fine-tune", "1", "--lr", "-0.1"], r"--lr must be a positive number"),
        (["--lr", "0.01"], r"--lr sets the fine-tuning: add --fine-tune"),  # was ignored without a word
        (["--config", "x.toml"], r"--config sets the fine-tuning: add --fine-tune"),
        (["--mean", "0.5", "--image-glob", "*.jpg"], r"--image-glob, --mean: only with --image-dir"),
    ],
)
def test_harden_refuses_bad_options_before_the_work(baseline, tmp_path, capsys, extra, message) -> None:
    with pytest.raises(ConfigError, match=message):
        harden_main([str(baseline), "--recipe", "bounds-only", "--out", str(tmp_path / "h"), *extra])
    assert "harden " not in capsys.readouterr().out  # refused before the rewrite, not after it
    assert not (tmp_path / "h").exists()


def test_evaluate_refuses_image_options_without_image_dir(baseline, capsys) -> None:
    from diehardlab.hardening.cli_evaluate import main as evaluate_main

    with pytest.raises(ConfigError, match=r"^--std: only with --image-dir"):
        evaluate_main([str(baseline), "--std", "0.2", "--campaigns", "1"])
