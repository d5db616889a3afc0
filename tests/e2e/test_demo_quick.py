"""The main job end to end: ``diehard demo --quick`` as a user runs it, in a real subprocess.

Trains two models, makes goldens, serves a campaign whose two local DUTs run the real runner under the
beam simulator (real crashes, real hangs), analyses the logs and writes the report. Then checks what the
demo promises: the watchdog restarted an app, recovered a hang and power-cycled a board; the report has a
FIT table per model; each measured interval contains the true simulated rate, or the report says it does not.
"""

from __future__ import annotations

import csv
import html
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from diehardlab.demo.pipeline import recovered_hang
from diehardlab.watchdog.journal import read_journal

pytestmark = pytest.mark.slow


def _demo(out: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="4294967296", MALLOC_TRIM_THRESHOLD_="4294967296")
    return subprocess.run([sys.executable, "-m", "diehardlab", "demo", "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=600, env=env)  # fmt: skip


@pytest.mark.timeout(900)
def test_quick_demo_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    r = _demo(out)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "SIMULATED BEAM" in r.stdout and "report:" in r.stdout
    assert "dashboard: http://127.0.0.1:" in r.stdout  # printed while the campaign serves, with its address
    for step in range(1, 8):
        assert f"[{step}/7]" in r.stdout  # progress: what step, how long

    journal = read_journal(out / "campaign" / "journal.jsonl")
    events = [e["event"] for e in journal]
    assert "app-restart" in events
    assert "power-cycle" in events
    assert recovered_hang(journal)  # a hang detected, and that DUT's benchmark started again
    assert "crash-detected" in events

    report = html.unescape((out / "report.html").read_text())
    assert "SIMULATED BEAM" in report
    fit = list(csv.DictReader((out / "analysis" / "fit.csv").open()))
    for dut in ("dut-baseline", "dut-diehardnet"):
        rows = [x for x in fit if x["group"].startswith(dut)]
        assert {x["error_class"] for x in rows} >= {"sdc", "due"}, rows
        assert all(float(x["fit_hi"]) >= float(x["fit"]) >= float(x["fit_lo"]) >= 0 for x in rows)
        assert dut in report
    assert "fit_hi" in report  # the FIT table with its interval
    # what the DieHardNet paper reports beyond cross sections: DUE causes, recovery levels, the Fig. 7 panel
    for heading in ("DUE root causes", "DUE recovery levels", "Fig. 7: FIT normalised to the DieHardNet critical-SDC"):
        assert heading in report
    runs = list(csv.DictReader((out / "analysis" / "runs.csv").open()))
    dues = [x for x in runs if x["due"] == "1"]
    assert dues and all(x["due_root_cause"] in ("crash-no-output", "hang-no-output") for x in dues)
    assert {x["due_recovery"] for x in dues} <= {"app-restart", "power-cycle"} and "power-cycle" in {
        x["due_recovery"] for x in dues}  # fmt: skip
    assert any(x["error_class"] == "sdc_critical" and x["fig7_norm"] == "1.0" for x in fit)

    truth = list(csv.DictReader((out / "analysis" / "truth.csv").open()))
    assert {x["group"].split("/")[0] for x in truth} == {"dut-baseline", "dut-diehardnet"}
    inside = sum(x["contains_true"] == "True" for x in truth)
    # Each interval contains the true rate, or the report says honestly how many do not.
    assert f"contains the simulator's true cross section in {inside} of {len(truth)} rows" in report
    for x in truth:
        if x["contains_true"] == "True":
            assert float(x["sigma_lo_cm2"]) <= float(x["true_sigma_cm2"]) <= float(x["sigma_hi_cm2"])

    state = json.loads((out / "demo.json").read_text())
    assert state["finished"] and state["simulated"] and state["seed"] == 1

    # A second run into the same folder refuses and leaves the results alone.
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    again = _demo(out)
    assert again.returncode == 2
    assert "already holds a finished demo" in again.stderr
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before
