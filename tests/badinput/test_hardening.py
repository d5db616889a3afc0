"""The bad-input battery of the hardening commands: ``diehard train``, ``diehard evaluate``, ``diehard select``.

Every case runs the real command in a fresh interpreter (``check_refused``): a non-zero exit, no traceback, one
line naming the option, file or field, and no output that looks complete. Each case loads torch (these commands'
modules need it), so the battery keeps to cases that each break something different. ``diehard sfi`` has its own.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from diehardlab.hardening.checkpoint import load_model, save_model
from diehardlab.hardening.train import load_config

from diehardlab.errors import ConfigError, DataError
from tests.badinput.battery import check_refused
from tests.badinput.disks import full_folder, readonly_folder
from tests.conftest import ROOT
from tests.harness.conftest import make_checkpoint

pytestmark = pytest.mark.timeout(120)

BASELINE = ROOT / "setups" / "models" / "digits_baseline.toml"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("bad-ckpt") / "digits-small")


def config_with(tmp_path: Path, key: str, value: str) -> Path:
    """The digits baseline config with one top-level line replaced (``key = value``)."""
    lines = BASELINE.read_text().splitlines()
    at = next(i for i, ln in enumerate(lines) if ln.startswith(f"{key} ="))
    lines[at] = f"{key} = {value}"
    p = tmp_path / f"{key}.toml"
    p.write_text("\n".join(lines) + "\n")
    return p


# -- train --------------------------------------------------------------------------------------------------


def test_train_refuses_an_infinite_learning_rate(tmp_path):
    cfg = config_with(tmp_path, "lr", "inf")
    out = tmp_path / "ck"
    r = check_refused("train", "--config", str(cfg), "--out", str(out), "--epochs", "1", names=[str(cfg), "lr"],
                      outputs=[out / "model.pt", out / "config.json"])  # fmt: skip
    assert len(r.lines) == 1


# More of our own, through the same loader in process (a subprocess each would cost more than it proves).
MORE_TRAIN_CONFIGS = [
    ("lr", "nan", "lr"),
    ("momentum", "-0.5", "momentum"),
    ("momentum", "1.5", "momentum"),
    ("weight_decay", "-1e-4", "weight_decay"),
    ("epochs", "true", "epochs"),
    ("batch_size", "0", "batch_size"),
    ("label_smoothing", "inf", "label_smoothing"),
    ("dataset", '"imagenet"', "dataset"),
]


@pytest.mark.parametrize(
    ("key", "value", "name"), MORE_TRAIN_CONFIGS, ids=[f"{k}={v}" for k, v, _ in MORE_TRAIN_CONFIGS]
)
def test_train_configs_in_process(key, value, name, tmp_path):
    cfg = config_with(tmp_path, key, value)
    with pytest.raises(ConfigError, match=re.escape(name)) as e:
        load_config(cfg)
    assert str(e.value).startswith(str(cfg)) and "\n" not in str(e.value)


def test_train_model_and_fault_tables_refuse_inf_and_booleans(tmp_path):
    text = BASELINE.read_text()
    for old, new, name in (("width = 16", "width = true", "model -> width"),
                           ("act_bound = 6.0", "act_bound = inf", "model -> act_bound"),
                           ("magnitude = [1.0, 1000.0]", "magnitude = [1.0, inf]", "faults -> magnitude")):  # fmt: skip
        p = tmp_path / "cfg.toml"
        p.write_text(text.replace(old, new))
        with pytest.raises(ConfigError, match=re.escape(name)):
            load_config(p)


def test_train_refuses_a_config_that_is_binary_or_a_folder(tmp_path):
    binary = tmp_path / "model.toml"
    binary.write_bytes(b"\xff\xfename = \x81\x00")
    out = tmp_path / "ck"
    check_refused("train", "--config", str(binary), "--out", str(out), names=[str(binary), "UTF-8"],
                  outputs=[out / "model.pt"])  # fmt: skip
    with pytest.raises(ConfigError, match="a folder, not a TOML file"):
        load_config(tmp_path)


def test_train_out_on_a_full_disk_keeps_nothing_half_written(tmp_path):
    with full_folder(tmp_path / "full") as full:
        out = full / "ck"
        check_refused("train", "--config", str(BASELINE), "--out", str(out), "--epochs", "1", "--train-limit", "64",
                      names=["--out", "No space left"], outputs=[out / "model.pt", out / "config.json"])  # fmt: skip
        assert not out.exists()


def test_a_checkpoint_save_on_a_full_disk_leaves_the_previous_one(ckpt, tmp_path):
    # The late failure: the disk fills up between two epochs. The save is refused in one line and the
    # previous model.pt stays complete (write then rename).
    with full_folder(tmp_path / "full", free=4096) as full:
        folder = full / "ck"
        folder.mkdir()
        model = load_model(ckpt).model
        save_model(folder, torch.nn.Linear(1, 1))
        before = (folder / "model.pt").read_bytes()
        with pytest.raises(ConfigError, match="No space left") as e:
            save_model(folder, model)
        assert str(folder / "model.pt") in str(e.value)
        assert (folder / "model.pt").read_bytes() == before
        assert sorted(p.name for p in folder.iterdir()) == ["model.pt"]


# -- evaluate -----------------------------------------------------------------------------------------------


EVALUATE_OPTIONS = [
    (("--batch-size", "0"), "--batch-size"),
    (("--limit", "-1"), "--limit"),
]


@pytest.mark.parametrize(("extra", "name"), EVALUATE_OPTIONS, ids=[" ".join(c[0]) for c in EVALUATE_OPTIONS])
def test_evaluate_refuses_bad_numbers(extra, name, ckpt, tmp_path):
    out = tmp_path / "e.json"
    check_refused("evaluate", str(ckpt), "--campaigns", "1", "--json", str(out), *extra, names=[name], outputs=[out])


def test_evaluate_outputs_read_only_or_full(ckpt, tmp_path):
    with readonly_folder(tmp_path / "ro") as ro:
        out = ro / "e.json"
        check_refused("evaluate", str(ckpt), "--limit", "20", "--campaigns", "1", "--json", str(out),
                      names=["--json", str(out), "read-only"], outputs=[out])  # fmt: skip
    with full_folder(tmp_path / "full") as full:
        out, faults = tmp_path / "e.json", full / "faults.csv"
        check_refused("evaluate", str(ckpt), "--limit", "20", "--campaigns", "1", "--json", str(out), "--fault-list",
                      str(faults), names=["--fault-list", "No space left"], outputs=[out, faults])  # fmt: skip


def test_evaluate_reproduce_file_with_bad_fields_in_process(tmp_path, capsys):
    from diehardlab.hardening.cli_evaluate import main

    p = tmp_path / "r.json"
    bad_images = {"split": "image-dir", "image_dir": {"folder": 3, "glob": "*.png"}}  # the --image-dir record
    for conf, name in (({"campaigns": 0}, "campaigns"), ({"limit": -1}, "limit"), ({"split": 3}, "split"),
                       (bad_images, "image_dir")):  # fmt: skip
        base = {"campaigns": 1, "seed": 0, "split": "test", "limit": 0, "layer_distribution": "uniform",
                "fault_spec": {}}  # fmt: skip
        p.write_text(json.dumps({"configuration": {**base, **conf}}))
        with pytest.raises(DataError, match=f"configuration -> {name}"):
            main(["ck", "--reproduce", str(p)])
    p.write_bytes(b"\xff\x00")
    with pytest.raises(DataError, match="not a 'diehard evaluate' JSON result"):
        main(["ck", "--reproduce", str(p)])
    with pytest.raises(ConfigError, match="--threads"):
        main(["ck", "--threads", "-1"])


# -- select -------------------------------------------------------------------------------------------------
# A damaged model.pt or config.json: select loads the checkpoint as golden and run do (load_model, tested in
# tests/badinput/test_harness.py through 'diehard run' and 'diehard golden' and in process).


def test_select_out_full(ckpt, tmp_path):
    with full_folder(tmp_path / "full") as full:
        out = full / "rank.csv"
        check_refused("select", str(ckpt), "--out", str(out), names=["--out", str(out), "No space left"],
                      outputs=[out])  # fmt: skip
