"""Training: seeded identity, resume identity, the curriculum really applied, sane accuracy, configs."""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import diehardlab.hardening.faults as faults_mod
import pytest
import torch
from diehardlab.hardening.checkpoint import load_model
from diehardlab.hardening.faults import FaultSpec
from diehardlab.hardening.train import augment, load_config, train

from diehardlab.errors import ConfigError
from tests.conftest import ROOT

SETUPS = sorted((ROOT / "setups" / "models").glob("*.toml"))


def _quiet(*_a, **_k) -> None:
    pass


def _metrics(folder: Path) -> list[dict[str, str]]:
    with open(folder / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_seeded_runs_are_identical_and_seeds_matter(tmp_path, tiny_cfg):
    cfg = replace(tiny_cfg, epochs=2)
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        train(replace(cfg, seed=seed), tmp_path / name, log=_quiet)
    a, b, c = ((tmp_path / n / "model.pt").read_bytes() for n in "abc")
    assert a == b
    assert a != c
    assert _metrics(tmp_path / "a") == [
        {**row, "epoch_time_s": _metrics(tmp_path / "a")[i]["epoch_time_s"]}
        for i, row in enumerate(_metrics(tmp_path / "b"))
    ]


def test_resume_gives_the_same_result(tmp_path, tiny_cfg):
    train(tiny_cfg, tmp_path / "straight", log=_quiet)
    summary = train(tiny_cfg, tmp_path / "split", log=_quiet, stop_after=2)
    assert summary["epochs"] == 2 and summary["test_accuracy"] is None
    assert len(_metrics(tmp_path / "split")) == 2
    with pytest.raises(ConfigError, match="--resume"):
        train(tiny_cfg, tmp_path / "split", log=_quiet)
    with pytest.raises(ConfigError, match="differs in: lr"):
        train(replace(tiny_cfg, lr=0.5), tmp_path / "split", resume=True, log=_quiet)
    train(tiny_cfg, tmp_path / "split", resume=True, log=_quiet)
    assert (tmp_path / "straight" / "model.pt").read_bytes() == (tmp_path / "split" / "model.pt").read_bytes()
    drop = "epoch_time_s"
    assert [{k: v for k, v in r.items() if k != drop} for r in _metrics(tmp_path / "straight")] == [
        {k: v for k, v in r.items() if k != drop} for r in _metrics(tmp_path / "split")
    ]
    # Only tensors and plain values: everything loads with weights_only.
    torch.load(tmp_path / "split" / "last.pt", weights_only=True)
    config = json.loads((tmp_path / "split" / "config.json").read_text())
    assert config["model"]["activation"] == "relu6" and config["seed"] == 0 and config["dataset"] == "digits"
    assert "diehardlab_version" in config and config["in_channels"] == 1 and config["num_classes"] == 10


def test_curriculum_grows_the_magnitude_linearly_in_training(tmp_path, tiny_cfg, monkeypatch):
    # Fixed factor 1 and every image corrupted: the factor observed in each epoch is the curriculum scale.
    cfg = replace(
        tiny_cfg,
        epochs=4,
        curriculum_start=0.25,
        train_limit=128,
        faults=FaultSpec(kind="block", magnitude=(1.0, 1.0), p=1.0),
    )
    seen: list[float] = []
    real = faults_mod._corrupt

    def spy(out, spec, gen, select, need_mask):
        bad, mask = real(out, spec, gen, select, True)
        if spec.layer_choice == "per-forward":  # training, not the injected validation
            nz = mask & (out != 0)
            seen.append(float((bad[nz] / out[nz]).abs().mean().detach()))
        return bad, mask

    monkeypatch.setattr(faults_mod, "_corrupt", spy)
    train(cfg, tmp_path / "c", log=_quiet)
    steps = 2  # 128 images / batch 64
    assert len(seen) == 4 * steps
    per_epoch = [seen[i * steps : (i + 1) * steps] for i in range(4)]
    for epoch, values in enumerate(per_epoch):
        assert values == pytest.approx([0.25 + 0.25 * epoch] * steps, rel=1e-5)
    assert [float(r["magnitude_scale"]) for r in _metrics(tmp_path / "c")] == pytest.approx([0.25, 0.5, 0.75, 1.0])


def test_short_digits_run_reaches_a_sane_accuracy(tmp_path, tiny_baseline):
    cfg = replace(tiny_baseline, train_limit=0, epochs=5, model=replace(tiny_baseline.model, width=16))
    summary = train(cfg, tmp_path / "d", log=_quiet)
    assert summary["test_accuracy"] > 0.9
    rows = _metrics(tmp_path / "d")
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    assert json.loads((tmp_path / "d" / "summary.json").read_text())["test_accuracy"] == summary["test_accuracy"]
    loaded = load_model(tmp_path / "d")
    assert loaded.num_classes == 10 and loaded.dataset == "digits"


def test_augment_crops_and_flips_per_image():
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).view(2, 1, 4, 4) + 1
    from diehardlab.hardening.train import TrainConfig

    out = augment(x, TrainConfig(crop_pad=1, flip=False), torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    # Each output is the image shifted by at most one pixel, zero filled.
    for i in range(2):
        ok = False
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                shifted = torch.nn.functional.pad(x[i], (1, 1, 1, 1))[:, 1 + dy : 5 + dy, 1 + dx : 5 + dx]
                ok |= torch.equal(shifted, out[i])
        assert ok
    flipped = augment(x.repeat(32, 1, 1, 1), TrainConfig(flip=True), torch.Generator().manual_seed(0))
    n_flipped = sum(torch.equal(flipped[i], x[i % 2].flip(2)) for i in range(64))
    assert 10 < n_flipped < 54


@pytest.mark.parametrize("path", SETUPS, ids=[p.stem for p in SETUPS])
def test_every_model_setup_loads(path):
    cfg = load_config(path)
    assert cfg.name == path.stem
    if path.stem.startswith("suite_"):  # the benchmark suite's recipes: suite_<dataset>_<arch> of the zoo model
        assert path.stem == "suite_" + cfg.model.arch.replace("/", "_") and cfg.normalise_with == "suite"
        return
    assert path.stem.startswith(
        cfg.dataset.replace("cifar10", "cifar10_resnet44") if cfg.dataset == "cifar10" else cfg.dataset
    )


def test_the_five_configurations_per_scale():
    for scale in ("digits", "fashion-mnist", "cifar10_resnet44"):
        cfgs = {
            v: load_config(ROOT / "setups" / "models" / f"{scale}_{v}.toml")
            for v in ("baseline", "relu6", "relu6_order", "relu6_fat", "diehardnet")
        }
        assert cfgs["baseline"].model.activation == "relu" and not cfgs["baseline"].fault_aware
        assert cfgs["relu6"].model.activation == "relu6" and cfgs["relu6"].model.order == "bn-act"
        assert cfgs["relu6_order"].model.order == "act-bn" and not cfgs["relu6_order"].fault_aware
        assert cfgs["relu6_fat"].fault_aware and cfgs["relu6_fat"].model.order == "bn-act"
        d = cfgs["diehardnet"]
        assert d.fault_aware and d.model.nan_filter and d.model.order == "act-bn" and d.model.activation == "relu6"
        budgets = {(c.epochs, c.batch_size, c.lr, c.seed, c.train_limit) for c in cfgs.values()}
        assert len(budgets) == 1  # same budget for all five
    paper = load_config(ROOT / "setups" / "models" / "cifar10_resnet44_diehardnet.toml")
    assert (paper.epochs, paper.lr, paper.loss, paper.batch_size, paper.weight_decay, paper.grad_clip) == (
        100,
        2.0,
        "bce",
        128,
        1e-5,
        1.0,
    )
    assert paper.model.arch == "resnet44" and paper.faults.kind == "block" and paper.faults.p == 0.75


def test_config_errors_name_file_and_field(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\nepochs = "ten"\n')
    with pytest.raises(ConfigError, match=r"bad.toml: epochs: Input should be a valid integer.*'ten'"):
        load_config(bad)
    bad.write_text('name = "x"\n[model]\nactivaton = "relu6"\n')
    with pytest.raises(ConfigError, match=r"bad.toml: model -> activaton: unknown key"):
        load_config(bad)
    bad.write_text('name = "x"\n[faults]\nkind = "square"\n')
    with pytest.raises(ConfigError, match=r"bad.toml: faults -> kind: 'square' is not one of"):
        load_config(bad)


def test_suite_recipe_multistep_on_a_zoo_model(tmp_path):
    """The suite's CIFAR-10 ResNet-20 recipe (Adam, MultiStep decay, the suite's normalisation) on a few
    images in the CIFAR-10 pickle format: the lr drops by gamma at each milestone epoch, and the checkpoint
    is the suite's model with its fixed normalisation recorded."""
    from tests.hardening.test_hardening_data import _write_cifar

    _write_cifar(tmp_path / "data" / "cifar-10-batches-py", 8)
    cfg = load_config(ROOT / "setups" / "models" / "suite_cifar10_resnet20.toml")
    assert (cfg.optimizer, cfg.schedule, cfg.milestones, cfg.gamma) == ("adam", "multistep", [50, 100, 150], 0.1)
    cfg = replace(
        cfg, data_dir=str(tmp_path / "data"), epochs=3, milestones=[1, 2], train_limit=16, batch_size=8, device="cpu"
    )
    train(cfg, tmp_path / "ck", log=_quiet, stop_after=2)
    # resumed from its config.json alone (whose "normalisation" entry is the constants, not the option)
    from diehardlab.cli import main

    assert main(["train", "--resume", "--out", str(tmp_path / "ck"), "--no-progress"]) == 0
    lrs = [float(r["lr"]) for r in _metrics(tmp_path / "ck")]
    assert lrs == pytest.approx([1e-3, 1e-4, 1e-5])
    saved = json.loads((tmp_path / "ck" / "config.json").read_text())
    assert saved["normalisation"] == {"mean": [0.4914, 0.4822, 0.4465], "std": [0.2023, 0.1994, 0.2010], "fixed": True}
    loaded = load_model(tmp_path / "ck")
    assert type(loaded.model).__name__ == "CifarResNet" and loaded.num_classes == 10
    with pytest.raises(ConfigError, match="milestones"):
        replace(cfg, milestones=[2, 1])
