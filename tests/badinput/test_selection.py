"""Bad input for DEAR-CNN's workload selection: ``diehard select --epsilon`` and ``diehard sfi curve``'s cutoff.

Each refusal runs the real command in a fresh interpreter (``check_refused``): a non-zero exit, no traceback, one
line naming the option or file, and neither the ranking nor its JSON (nor the curve's files) left behind. The
other values of the same options go through the same checks in process.
"""

from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path

import numpy as np
import pytest

from diehardlab.errors import ConfigError, DataError
from tests.badinput.battery import check_refused
from tests.badinput.disks import full_folder
from tests.harness.conftest import make_checkpoint

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("sel-ckpt") / "digits-small")


@pytest.fixture
def run(tmp_path) -> Path:
    """A finished run folder in the files 'diehard sfi run' writes: 30 faults x 6 images."""
    d = tmp_path / "run"
    d.mkdir()
    rng = np.random.default_rng(0)
    np.save(d / "outcomes.npy", rng.choice(np.array([0, 1, 2], dtype=np.int8), size=(30, 6), p=[0.6, 0.3, 0.1]))
    np.save(d / "done.npy", np.ones(30, dtype=bool))
    (d / "run.json").write_text(json.dumps({"image_ids": [f"img{i}" for i in range(6)], "model": "test"}))
    (d / "summary.json").write_text(json.dumps({"seconds_this_call": 1.5, "resumed_from": 0}))
    return d


def _outs(prefix: Path) -> list[Path]:
    return [prefix.with_suffix(s) for s in (".csv", ".json", ".png")]


@pytest.mark.parametrize("eps", ["0", "nan"])
def test_select_refuses_an_epsilon_that_is_not_a_positive_distance(ckpt, tmp_path, eps):
    out = tmp_path / "rank.csv"
    check_refused("select", str(ckpt), "--epsilon", eps, "--out", str(out), names=["--epsilon", eps, "above 0"],
                  outputs=[out, out.with_suffix(".json")])  # fmt: skip


def test_select_refuses_a_window_with_no_image(ckpt, tmp_path):
    out = tmp_path / "rank.csv"
    r = check_refused("select", str(ckpt), "--images", "5", "--epsilon", "1e-300", "--out", str(out),
                      names=["--epsilon", "no image scores within", "larger --epsilon"],
                      outputs=[out, out.with_suffix(".json")])  # fmt: skip
    assert len(r.lines) == 1


def test_select_in_process_refusals(ckpt, tmp_path):
    from diehardlab.hardening.selection import main

    out = tmp_path / "rank.csv"
    for eps in ("-0.1", "inf", "-inf"):
        with pytest.raises(ConfigError, match="--epsilon"):
            main([str(ckpt), f"--epsilon={eps}", "--out", str(out)])
    with pytest.raises(ConfigError, match=r"give a \.csv name"):
        main([str(ckpt), "--out", str(tmp_path / "rank.json")])
    with pytest.raises(SystemExit):  # argparse: an unknown mode estimate, a non-number
        main([str(ckpt), "--epsilon", "0.1", "--mode-estimate", "median", "--out", str(out)])
    with pytest.raises(SystemExit):
        main([str(ckpt), "--epsilon", "wide", "--out", str(out)])
    assert not out.exists() and not out.with_suffix(".json").exists()


@pytest.mark.parametrize("opt, value, words", [
    ("--plateau-threshold", "0", ["--plateau-threshold", "above 0"]),
    ("--plateau-window", "6", ["--plateau-window", "6 images"]),
])  # fmt: skip
def test_curve_refuses_a_cutoff_it_cannot_compute(run, tmp_path, opt, value, words):
    prefix = tmp_path / "curve"
    check_refused("sfi", "curve", "--run", str(run), opt, value, "--out", str(prefix), names=words,
                  outputs=_outs(prefix))  # fmt: skip


def test_curve_names_the_line_of_a_bad_score(run, tmp_path):
    sel = tmp_path / "sel.csv"
    sel.write_text("rank,image,label,predicted,score,metric\n0,img3,1,1,0.5,el2n\n1,img1,1,1,high,el2n\n")
    prefix = tmp_path / "curve"
    check_refused("sfi", "curve", "--run", str(run), "--selection", str(sel), "--out", str(prefix),
                  names=[str(sel), "line 3", "'high'"], outputs=_outs(prefix))  # fmt: skip


def test_curve_in_process_refusals(run, tmp_path):
    from diehardlab.hardening.sfi.cli import main

    prefix = tmp_path / "curve"
    base = ["curve", "--run", str(run), "--out", str(prefix)]
    for value in ("nan", "-5e-5", "inf"):
        with pytest.raises(ConfigError, match="--plateau-threshold"):
            main([*base, f"--plateau-threshold={value}"])
    for value in ("0", "-1", "9"):
        with pytest.raises(ConfigError, match="--plateau-window"):
            main([*base, f"--plateau-window={value}"])
    with pytest.raises(ConfigError, match="--orders 0"):
        main([*base, "--orders", "0"])
    with pytest.raises(SystemExit):  # argparse: not a scale it knows
        main([*base, "--plateau-scale", "images"])
    other = tmp_path / "other.csv"
    other.write_text("rank,image,label,predicted,score,metric\n0,cifar10_00_3.png,3,3,0.1,el2n\n")
    with pytest.raises(DataError, match="ranks none of the 6 images"):
        main([*base, "--selection", str(other)])
    twice = tmp_path / "twice.csv"
    twice.write_text("rank,image\n0,img1\n1,img1\n")
    with pytest.raises(DataError, match="ranks an image twice"):
        main([*base, "--selection", str(twice)])
    assert not any(p.exists() for p in _outs(prefix))


def test_curve_on_a_full_disk_keeps_the_previous_files(run, tmp_path):
    from diehardlab.hardening.sfi.cli import main

    with full_folder(tmp_path / "full", free=400 * 1024, size_kib=512) as full:
        prefix = full / "curve"
        # the first curve fits; the disk is then filled, and a second one must leave it whole
        assert main(["curve", "--run", str(run), "--out", str(prefix)]) == 0
        before = {p: p.read_bytes() for p in _outs(prefix) if p.exists()}
        filler = full / "filler2"
        with open(filler, "wb", buffering=0) as f, contextlib.suppress(OSError):  # ENOSPC: full
            while True:
                f.write(b"\0" * 4096)
        check_refused("sfi", "curve", "--run", str(run), "--plateau-window", "2", "--out", str(prefix),
                      names=["--out", "No space left"], outputs=list(before))  # fmt: skip


@pytest.mark.parametrize("damage", ["outcomes-garbage", "run-json-garbage", "done-missing", "done-other-shape"])
def test_curve_refuses_a_damaged_run_folder(run, tmp_path, damage):
    """The run folder is read as 'sfi compare' reads it: a damaged file is one line naming --run, not a traceback."""
    from diehardlab.hardening.sfi.cli import main

    if damage == "outcomes-garbage":
        (run / "outcomes.npy").write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff" * 8)
    elif damage == "run-json-garbage":
        (run / "run.json").write_bytes(b"\xff\xfe{not json")
    elif damage == "done-missing":
        (run / "done.npy").unlink()
    else:
        np.save(run / "done.npy", np.ones(7, dtype=bool))
    prefix = tmp_path / "curve"
    with pytest.raises(DataError, match=f"--run: {re.escape(str(run))}"):
        main(["curve", "--run", str(run), "--out", str(prefix)])
    assert not any(p.exists() for p in _outs(prefix))
