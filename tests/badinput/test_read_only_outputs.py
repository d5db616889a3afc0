"""Every command that writes an ``--out`` refuses a read-only one, and ``sfi run`` a full one, in one line.

The other batteries cover a full disk for most commands; these are the read-only cases issue 18 lists that they
leave out. As root the folder is a real read-only tmpfs (EROFS: permissions do not bind root); without root it is
a 0555 folder (``tests/badinput/disks.py``). Nothing may be left in the folder, and the command names it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.badinput.battery import check_refused
from tests.badinput.disks import full_folder, readonly_folder
from tests.badinput.test_analysis import _fit, _results, small  # noqa: F401  (small is a fixture)
from tests.harness.conftest import make_checkpoint


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ro-ckpt") / "digits-small")


def _empty(folder: Path) -> None:
    assert list(folder.iterdir()) == [], f"{folder} holds {list(folder.iterdir())}"


def test_fit_and_report_into_a_read_only_folder(small, tmp_path):  # noqa: F811
    with readonly_folder(tmp_path / "ro") as ro:
        check_refused(*_fit(small, out=ro / "fit"), names=[str(ro / "fit"), "cannot write"])
        check_refused("report", "--fit", str(small["fit"]), "--out", str(ro / "r.html"), names=[str(ro / "r.html")])
        _empty(ro)


def test_logs_and_pvf_into_a_read_only_folder(small, tmp_path):  # noqa: F811
    logs = _results(tmp_path, "5;kern;0;1;2;0:0x10:FADD:3:0x1:0.5:16::value_before0x1:value_after0x2\n")
    with readonly_folder(tmp_path / "ro") as ro:
        check_refused("logs", str(small["logs"]), "--csv", str(ro / "logs.csv"), names=[str(ro / "logs.csv")])
        check_refused("pvf", str(logs), "--out", str(ro / "pvf"), names=[str(ro / "pvf"), "cannot write"])
        _empty(ro)


def test_select_into_a_read_only_folder(ckpt, tmp_path):
    with readonly_folder(tmp_path / "ro") as ro:
        check_refused("select", str(ckpt), "--out", str(ro / "rank.csv"), names=["--out", str(ro / "rank.csv")])
        _empty(ro)


def test_sfi_run_into_a_read_only_or_full_folder(ckpt, tmp_path):
    run = ["sfi", "run", str(ckpt), "--method", "layer", "--error", "0.3", "--images", "4"]
    with readonly_folder(tmp_path / "ro") as ro:
        check_refused(*run, "--out", str(ro / "run"), names=["--out", str(ro / "run")])
        _empty(ro)
    with full_folder(tmp_path / "full") as full:
        out = full / "run"
        check_refused(*run, "--out", str(out), names=["--out", str(out)])
        # nothing that looks like a finished run: no run.json (a resume would trust it)
        assert not (out / "run.json").exists()
