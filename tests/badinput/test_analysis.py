"""The bad-input battery of the analysis commands: ``fit``, ``pvf``, ``report``, ``stats`` and ``logs``.

Each case must be refused with a non-zero exit, one clear line naming the option, field or file at fault, no
traceback, and no output that looks complete (an earlier output stays as it was). A full disk is a real write
failure: the child runs with a file-size limit (RLIMIT_FSIZE; Python ignores SIGXFSZ, so a write past it fails
with EFBIG as a write to a full disk fails with ENOSPC). A read-only folder is tested where permissions bind
(not as root); a path under a regular file fails the same way for every user.

Most cases run ``diehard`` in its own process (``check_refused``); variants of an option already covered so run
through the same dispatcher in this process (``refused_here``), which is as strict about tracebacks (any
exception other than the one-line error escapes it) and costs no interpreter start.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
from pathlib import Path

import pytest

from tests.analysis.conftest import T0, campaign_file, chipir_rows, write
from tests.analysis.logs import dut_log
from tests.badinput.battery import check_refused

ROOT_USER = os.geteuid() == 0


@contextlib.contextmanager
def file_size_limit(nbytes: int):
    """Children started inside cannot write files larger than ``nbytes``: the disk is 'full' for them."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def refused_here(capsys, *argv: str, names=(), outputs=()) -> str:
    """``diehard ARGV`` through the dispatcher in this process: exit 2, one error line naming ``names``."""
    from diehardlab.cli import main

    outputs = list(outputs)
    before = {p: p.read_bytes() for p in outputs if p.is_file()}
    try:
        rc = main(list(argv))
    except SystemExit as exc:  # argparse's own refusals
        rc = exc.code
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if "error" in ln.lower()]
    assert rc not in (0, None) and len(lines) == 1, err
    for word in names:
        assert word in err, f"the error does not name {word!r}: {err}"
    for p in outputs:
        assert (p.read_bytes() == before[p]) if p in before else not p.exists()
    return err


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> dict[str, Path]:
    """One small campaign (a count log, one DUT log with an SDC) and its fit folder."""
    from diehardlab.analysis.fit import fit, write_result

    tmp = tmp_path_factory.mktemp("bad")
    write(tmp / "flux.txt", chipir_rows(3600, 10.0))
    dut_log(tmp / "logs", T0.replace(minute=2), sdc_at={5: True})
    cfile = campaign_file(tmp)
    write_result(fit(cfile, [tmp / "logs"], [tmp / "flux.txt"]), tmp / "fit")
    return {"tmp": tmp, "campaign": cfile, "logs": tmp / "logs", "flux": tmp / "flux.txt", "fit": tmp / "fit"}


# -- stats ------------------------------------------------------------------------------------------------------

STATS = [  # the cases issue 18 lists, each in its own process
    (["poisson", "-3"], ["EVENTS", ">= 0"]),
    (["poisson", str(10**30)], ["EVENTS", "2^53"]),
    (["poisson", "3", "--fluence", "0"], ["--fluence"]),
    (["poisson", "3", "--fluence", "nan"], ["--fluence"]),
    (["poisson", "3", "--fluence", "inf"], ["--fluence"]),
    (["poisson", "3", "--fluence", "1e9", "--sea-level-flux", "0"], ["--sea-level-flux"]),
    (["sample-size", "1000", "--t", "0"], ["--t"]),
    (["sample-size", "1000", "--subpopulations", "0"], ["--subpopulations"]),
    (["sample-size", "--weights", "100", "--bits", "-3"], ["--bits"]),
]
STATS_HERE = [  # more of the same options, and their neighbours
    (["poisson", "3", "--fluence", "-1e9"], ["--fluence"]),
    (["poisson", "3", "--fluence", "1e9", "--sea-level-flux", "-13"], ["--sea-level-flux"]),
    (["poisson", "3", "--confidence", "1.5"], ["--confidence"]),
    (["binomial", "5", "3"], ["K <= N"]),
    (["binomial", "1", str(10**30)], ["2^53"]),
    (["sample-size", "1000", "--t", "nan"], ["--t"]),
    (["sample-size", "1000", "--subpopulations", "-2"], ["--subpopulations"]),
    (["sample-size", "--weights", "-5"], ["--weights"]),
    (["sample-size", "--weights", "100", "--values", "0"], ["--values"]),
    (["sample-size", "1000", "--error", "nan"], ["--error"]),
    (["sample-size", "-1000"], ["POPULATION"]),
    (["target", "nan"], ["target relative width"]),
    (["target", "0.2", "--events", "2", "--beam-on", "nan"], ["--beam-on"]),
    (["target", "0.2", "--events", "2", "--beam-on", "inf"], ["--beam-on"]),
]


@pytest.mark.parametrize(("argv", "names"), STATS, ids=[" ".join(a) for a, _ in STATS])
def test_stats_refuses(argv, names):
    check_refused("stats", *argv, names=names)


@pytest.mark.parametrize(("argv", "names"), STATS_HERE, ids=[" ".join(a) for a, _ in STATS_HERE])
def test_stats_refuses_here(capsys, argv, names):
    refused_here(capsys, "stats", *argv, names=names)


# -- fit ----------------------------------------------------------------------------------------------------------


def _fit(small, *extra: str, out: Path | None = None) -> list[str]:
    return ["fit", "--campaign", str(small["campaign"]), "--logs", str(small["logs"]), "--flux", str(small["flux"]),
            "--out", str(out or small["tmp"] / "fit-new"), *extra]  # fmt: skip


def test_fit_refuses_a_bad_dut_timezone(small):
    # before: the error named --tz, an option 'diehard fit' does not have
    check_refused(*_fit(small, "--dut-timezone", "Mars/Olympus"), names=["--dut-timezone", "Mars/Olympus"],
                  outputs=[small["tmp"] / "fit-new"])  # fmt: skip


@pytest.mark.parametrize(
    ("extra", "names"),
    [
        (["--flux-gap", "nan"], ["--flux-gap"]),
        (["--flux-gap", "-5"], ["--flux-gap"]),
        (["--jobs", "-1"], ["--jobs"]),
        (["--confidence", "2"], ["--confidence"]),
        (["--group-by", "board,colour"], ["group_by", "colour"]),
        (["--journal", "/nonexistent/journal.jsonl"], ["--journal"]),
    ],
)
def test_fit_refuses_bad_options(small, capsys, extra, names):
    refused_here(capsys, *_fit(small, *extra), names=names, outputs=[small["tmp"] / "fit-new"])


def test_fit_refuses_a_garbage_journal(small, tmp_path, capsys):
    # before: a journal named by --journal that is not one was a note on stderr, and fit wrote its results
    journal = tmp_path / "journal.jsonl"
    journal.write_bytes(b"x" + os.urandom(2000).replace(b"\n", b" ") + b"\n")
    refused_here(capsys, *_fit(small, "--journal", str(journal), out=tmp_path / "out"),
                 names=["--journal", str(journal), ":1:"], outputs=[tmp_path / "out"])  # fmt: skip


CAMPAIGN = """[campaign]
name = "t"
[facility]
kind = "chipir"
{facility}
[[dut]]
name = "dut1"
transport = "local"
[[dut.benchmark]]
name = "cudaDarknet"
argv = ["x"]
{analysis}
"""
WINDOW = "beam_windows = [{start = 2026-03-01T11:00:00, end = 2026-03-01T10:00:00}]"


@pytest.mark.parametrize(
    ("facility", "analysis", "names"),
    [
        ("flux_factor = inf", "", ["flux_factor"]),
        ("flux_factor = 1e5\nflux_gap_s = nan", "", ["flux_gap_s"]),
        (f"flux_factor = 1e5\n{WINDOW}", "", ["beam_windows", "end after it starts"]),
        ("flux_factor = 1e5", "[analysis]\nsea_level_flux = -13", ["sea_level_flux"]),
        ("flux_factor = 1e5", '[[analysis.ecc]]\nvalue = "ON"', ["ecc", "at least one of"]),
    ],
)
def test_fit_refuses_bad_campaign_numbers(small, tmp_path, capsys, facility, analysis, names):
    bad = tmp_path / "campaign.toml"
    bad.write_text(CAMPAIGN.format(facility=facility, analysis=analysis))
    args = _fit(small, out=tmp_path / "out")
    args[2] = str(bad)
    if "inf" in facility:  # one of them in its own process
        check_refused(*args, names=[str(bad), *names], outputs=[tmp_path / "out"])
    else:
        refused_here(capsys, *args, names=[str(bad), *names], outputs=[tmp_path / "out"])


def test_fit_refuses_an_unknown_fig7_reference_key(small, tmp_path, capsys):
    # before: fig7_reference = "colour=red" matched no group and fit wrote its results without a word
    bad = tmp_path / "campaign.toml"
    bad.write_text(CAMPAIGN.format(facility="flux_factor = 1e5", analysis='[analysis]\nfig7_reference = "colour=red"'))
    args = _fit(small, out=tmp_path / "out")
    args[2] = str(bad)
    refused_here(capsys, *args, names=["fig7_reference", "colour"], outputs=[tmp_path / "out"])


def test_fit_refuses_garbage_flux_and_a_foreign_out_folder(small, tmp_path):
    (tmp_path / "flux.bin").write_bytes(os.urandom(4000))
    args = _fit(small, out=tmp_path / "out")
    args[6] = str(tmp_path / "flux.bin")
    check_refused(*args, names=["flux.bin", "not a facility log"], outputs=[tmp_path / "out"])
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("keep me")
    check_refused(*_fit(small, out=tmp_path / "mine"), names=["thesis.tex", "not outputs of diehard fit"],
                  outputs=[tmp_path / "mine" / "thesis.tex"])  # fmt: skip


def test_fit_skips_binary_garbage_under_a_log_name(small, tmp_path):
    # before: the garbage became a run with a "no #END" DUE (0 fluence: events_beam_off) and 9 notes of its bytes
    from diehardlab.analysis.fit import fit

    logs = shutil.copytree(small["logs"], tmp_path / "logs")
    junk = logs / "2026_03_01_10_00_00_cudaDarknet_dut1.log"
    junk.write_bytes(b"x" + os.urandom(5000))
    res = fit(small["campaign"], [logs], [small["flux"]])
    assert len(res.runs) == 1 and int(res.runs["due"].sum()) == 0 and int(res.runs["sdc"].sum()) == 1
    mine = [n for n in res.notes if str(junk) in n]
    assert len(mine) == 1 and "skipped: none of its" in mine[0] and "libLogHelper record" in mine[0], mine


def test_fit_on_a_full_disk_keeps_the_earlier_results(small, tmp_path):
    out = tmp_path / "fit"
    shutil.copytree(small["fit"], out)
    with file_size_limit(1024):
        check_refused(*_fit(small, out=out), names=[str(out), "cannot write"],
                      outputs=[out / n for n in ("fit.csv", "runs.csv", "events.csv", "meta.json")])  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fit"]  # no temporary folder left behind


def test_fit_into_an_unwritable_place(small, tmp_path):
    (tmp_path / "file").write_text("x")
    check_refused(*_fit(small, out=tmp_path / "file" / "out"), names=["cannot write"])
    if not ROOT_USER:  # permissions do not bind root
        (tmp_path / "ro").mkdir(mode=0o555)
        check_refused(*_fit(small, out=tmp_path / "ro" / "out"), names=["cannot write"],
                      outputs=[tmp_path / "ro" / "out"])  # fmt: skip


# -- pvf --------------------------------------------------------------------------------------------------------


def _results(tmp_path: Path, text: bytes | str) -> Path:
    app = tmp_path / "nv" / "logs" / "app"
    app.mkdir(parents=True, exist_ok=True)
    f = app / "results-mode0-igid1.bfm0.10.txt"
    f.write_bytes(text if isinstance(text, bytes) else text.encode())
    return tmp_path / "nv" / "logs"


def test_pvf_refuses_garbage_and_nothing_injected(tmp_path):
    logs = _results(tmp_path, os.urandom(3000).replace(b"\n", b" ") + b"\n")
    check_refused("pvf", str(logs), "--out", str(tmp_path / "out"), names=[str(logs), "no readable NVBitFI"],
                  outputs=[tmp_path / "out"])  # fmt: skip
    logs = _results(tmp_path, "5;kern;0;1;2;0:0x10:FADD:3:0x1:0.5:1::value_before0x1:value_after0x2\n")
    folder = logs / "app" / "app-group1-model0-icount5"
    folder.mkdir()
    (folder / "nvbitfi-injection-log-temp.txt").write_text("Error not injected\n")
    check_refused("pvf", str(logs), "--out", str(tmp_path / "out"), names=["none of the 1 injections was made"],
                  outputs=[tmp_path / "out"])  # fmt: skip


def test_pvf_on_a_full_disk(tmp_path):
    logs = _results(tmp_path, "5;kern;0;1;2;0:0x10:FADD:3:0x1:0.5:16::value_before0x1:value_after0x2\n")
    with file_size_limit(200):
        check_refused("pvf", str(logs), "--out", str(tmp_path / "out"), names=["cannot write"],
                      outputs=[tmp_path / "out"])  # fmt: skip
    assert not list(tmp_path.glob(".out*"))


# -- report -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "names"),
    [
        (b"", ["fit.csv", "empty"]),
        (os.urandom(2000), ["fit.csv"]),
        (b"app,group,model,outcome,count,injections,pvf\nx,FP32,FLIP,sdc,1,10,0.1\n", ["fit.csv", "lacks"]),
    ],
    ids=["empty", "binary", "foreign"],
)
def test_report_refuses_what_is_not_a_fit(tmp_path, capsys, content, names):
    (tmp_path / "fit").mkdir()
    (tmp_path / "fit" / "fit.csv").write_bytes(content)
    args = ("report", "--fit", str(tmp_path / "fit"), "--out", str(tmp_path / "r.html"))
    if content:
        refused_here(capsys, *args, names=names, outputs=[tmp_path / "r.html"])
    else:
        check_refused(*args, names=names, outputs=[tmp_path / "r.html"])


def test_report_refuses_bad_side_inputs(small, tmp_path, capsys):
    (tmp_path / "e.json").write_bytes(os.urandom(500))
    out = tmp_path / "r.html"
    check_refused("report", "--evaluate", str(tmp_path / "e.json"), "--out", str(out), names=["e.json"], outputs=[out])
    (tmp_path / "e.json").write_text(json.dumps([1, 2, 3]))
    refused_here(capsys, "report", "--evaluate", str(tmp_path / "e.json"), "--out", str(out),
                 names=["e.json", "not an evaluate JSON"], outputs=[out])  # fmt: skip
    (tmp_path / "t.truth.json").write_bytes(b"\xff\xfe" + os.urandom(100))
    refused_here(capsys, "report", "--fit", str(small["fit"]), "--truth", str(tmp_path / "t.truth.json"), "--out",
                 str(out), names=["t.truth.json", "not a readable truth file"], outputs=[out])  # fmt: skip
    (tmp_path / "pvf").mkdir()
    (tmp_path / "pvf" / "pvf.csv").write_bytes(os.urandom(1000))
    refused_here(capsys, "report", "--pvf", str(tmp_path / "pvf"), "--out", str(out), names=["pvf.csv"],
                 outputs=[out])  # fmt: skip
    (tmp_path / "meta").mkdir()
    shutil.copy(small["fit"] / "fit.csv", tmp_path / "meta" / "fit.csv")
    (tmp_path / "meta" / "meta.json").write_bytes(b"{not json")
    refused_here(capsys, "report", "--fit", str(tmp_path / "meta"), "--out", str(out), names=["meta.json"],
                 outputs=[out])  # fmt: skip


def test_report_on_a_full_disk_keeps_the_earlier_report(small, tmp_path):
    out = tmp_path / "r.html"
    out.write_text("<html>the earlier report</html>")
    with file_size_limit(1024):
        check_refused("report", "--fit", str(small["fit"]), "--out", str(out), names=[str(out), "cannot write"],
                      outputs=[out])  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.html"]


# -- logs ---------------------------------------------------------------------------------------------------------


def test_logs_refuses(small, tmp_path, capsys):
    check_refused("logs", str(small["logs"]), "--tz", "Mars/Olympus", names=["--dut-timezone (--tz)", "Mars/Olympus"])
    refused_here(capsys, "logs", str(small["logs"]), "--dut-timezone", "Mars/Olympus", names=["--dut-timezone"])
    refused_here(capsys, "logs", str(tmp_path / "nope"), names=["nope", "no such folder"])
    refused_here(capsys, "logs", str(small["logs"]), "--jobs", "-1", names=["--jobs"])
    (tmp_path / "dir.csv").mkdir()
    refused_here(capsys, "logs", str(small["logs"]), "--csv", str(tmp_path / "dir.csv"),
                 names=["dir.csv", "is a folder"])  # fmt: skip
    csv = tmp_path / "inv.csv"
    with file_size_limit(300):
        check_refused("logs", str(small["logs"]), "--csv", str(csv), names=[str(csv), "cannot write", "--csv"],
                      outputs=[csv])  # fmt: skip
    assert not list(tmp_path.glob(".inv.csv*"))
