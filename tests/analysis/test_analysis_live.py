"""The dashboard's analysis worker (``python -m diehardlab.analysis.live``) as a real subprocess.

Its numbers must be ``diehard fit``'s on the same files: the test runs both on the real ChipIR sample and
compares every group's events, fluence, cross section and interval. A request it cannot serve gets one line,
and the worker answers the next one.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

from diehardlab.analysis.fit import fit
from diehardlab.analysis.live import _in_progress

from tests.conftest import ROOT

CAMPAIGN = ROOT / "setups" / "analysis" / "chipir-2016-11.toml"


def _ask(proc: subprocess.Popen, req: dict) -> dict:
    proc.stdin.write(json.dumps(req) + "\n")
    proc.stdin.flush()
    return json.loads(proc.stdout.readline())


def test_worker_numbers_are_the_fits_on_the_same_files(tmp_path, beam_logs, facility_logs):
    flux = facility_logs / "countlog-2016-11-24.txt"
    proc = subprocess.Popen([sys.executable, "-m", "diehardlab.analysis.live"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        bad = _ask(proc, {"campaign": str(tmp_path / "missing.toml"), "logs": [str(beam_logs)]})
        assert bad["ok"] is False and "missing.toml" in bad["error"] and "\n" not in bad["error"]
        doc = _ask(proc, {"campaign": str(CAMPAIGN), "logs": [str(beam_logs)], "flux": [str(flux)], "target": 0.2})
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)
    assert doc["ok"], doc
    # What diehard fit writes to fit.csv is fit()'s group table (the browser test runs the command line itself).
    ref = fit(CAMPAIGN, [beam_logs], [flux], jobs=1).groups.set_index(["group", "error_class"])
    assert doc["rows"]
    for row in doc["rows"]:
        g = ref.loc[(row["group"], row["error_class"])]
        assert row["events"] == int(g["events"])
        for key in ("fluence_n_cm2", "sigma_cm2", "sigma_lo_cm2", "sigma_hi_cm2", "beam_on_s"):
            assert math.isclose(row[key], float(g[key]), rel_tol=1e-12), (key, row[key], g[key])
    assert doc["command"].startswith("diehard fit --campaign ") and str(flux) in doc["command"]
    assert doc["runs"] == 9 and doc["runs_excluded"] == 8  # the other samples lie outside this count log
    fac = doc["facility"][0]
    assert fac["rows"] > 1000 and fac["last_utc"].startswith("2016-11-24T09:04") and fac["series"]


def test_a_run_in_progress_is_not_a_due_yet(tmp_path, beam_logs, facility_logs):
    # The 2016 Darknet run as the server would hold it while it still runs: no #ABORT/#END yet.
    name = "2016_11_24_01_26_02_cudaDarknet_carol-k402.log"
    lines = (beam_logs / name).read_text().splitlines(keepends=True)
    (tmp_path / name).write_text("".join(ln for ln in lines if not ln.startswith(("#ABORT", "#END"))))
    result = fit(CAMPAIGN, [tmp_path], [facility_logs / "countlog-2016-11-24.txt"], jobs=1)
    group = result.runs["group"].iloc[0]
    # diehard fit reads a log without its closing line as a DUE of unknown cause...
    assert result.runs["due_cause"].iloc[0] == "no #END"
    assert result.groups.set_index(["group", "error_class"]).loc[(group, "due"), "events"] == 1
    # ...while the server still writes it, it is no DUE yet; its SDCs stay.
    live, running = _in_progress(result, {name})
    g = live.groups.set_index(["group", "error_class"])
    assert running == [name]
    assert g.loc[(group, "due"), "events"] == 0 and g.loc[(group, "sdc"), "events"] == 2
    assert _in_progress(result, {"another.log"})[1] == []  # a finished run keeps fit's reading


WITHOUT_PANDAS = """
import sys
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] == 'pandas':
            raise ImportError('not installed on this server')
sys.meta_path.insert(0, _Block())
from diehardlab.analysis.live import main
raise SystemExit(main())
"""


def test_a_server_without_the_analysis_extra_is_told_which_extra_to_install():
    r = subprocess.run([sys.executable, "-c", WITHOUT_PANDAS], input=json.dumps({"campaign": "c.toml"}) + "\n",
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    doc = json.loads(r.stdout)
    assert doc == {"ok": False, "error": doc["error"]} and "pip install 'diehardlab[analysis]'" in doc["error"]
    assert "pandas" in doc["error"] and r.returncode == 0 and "Traceback" not in r.stderr


def test_a_simulator_facility_log_of_one_row_is_skipped_not_fatal(tmp_path, beam_logs, facility_logs):
    # A run that just started (or died at once) under the beam simulator has one row beside it so far.
    name = "2016_11_24_01_26_02_cudaDarknet_carol-k402.log"
    (tmp_path / name).write_bytes((beam_logs / name).read_bytes())
    sibling = tmp_path / (name + ".chipir.txt")
    sibling.write_text(
        "Data From ChipIR\n24/11/2016 03:26:00 .411  00001000000 00001000000 00001000000 00001000000 2000.00 40.00\n"
    )
    result = fit(CAMPAIGN, [tmp_path], [facility_logs / "countlog-2016-11-24.txt"], jobs=1)
    assert any(n.startswith("skipped: ") and str(sibling) in n for n in result.notes)
    assert result.groups.set_index(["group", "error_class"]).loc[(result.runs["group"].iloc[0], "sdc"), "events"] == 2
