"""The analysis commands as subprocesses, on a machine without torch (it is blocked)."""

from __future__ import annotations

import json

from tests.analysis.conftest import T0, campaign_file, chipir_rows, write
from tests.analysis.logs import dut_log
from tests.conftest import run_diehard


def test_fit_command_without_torch(tmp_path):
    write(tmp_path / "flux.txt", chipir_rows(3600, 10.0))
    dut_log(tmp_path / "logs", T0.replace(minute=2), sdc_at={5: True})
    cfile = campaign_file(tmp_path)
    r = run_diehard("fit", "--campaign", str(cfile), "--logs", str(tmp_path / "logs"), "--flux",
                    str(tmp_path / "flux.txt"), "--out", str(tmp_path / "out"), block=("torch",))  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "fluence: integrated; intervals: garwood two-sided 0.95" in r.stdout
    assert (tmp_path / "out" / "fit.csv").is_file()
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    assert meta["runs"] == 1 and meta["runs_excluded"] == 0


def test_fit_bad_campaign_is_a_clear_error(tmp_path):
    bad = tmp_path / "c.toml"
    bad.write_text(
        '[campaign]\nname = "x"\n[[dut]]\nname = "a"\ntransport = "local"\n'
        '[[dut.benchmark]]\nname = "b"\nargv = ["b"]\n'
    )
    r = run_diehard("fit", "--campaign", str(bad), "--logs", str(tmp_path), block=("torch",))
    assert r.returncode == 2 and "no .log files under" in r.stderr
    dut_log(tmp_path / "logs", T0)
    r = run_diehard("fit", "--campaign", str(bad), "--logs", str(tmp_path / "logs"), block=("torch",))
    assert r.returncode == 2
    assert "no [facility] table (no beam-simulator truth files beside the logs)" in r.stderr


def test_stats_and_help_without_torch():
    r = run_diehard("stats", "sample-size", "17174144", block=("torch",))
    assert r.returncode == 0 and "16,625" in r.stdout, r.stderr
    r = run_diehard("--help", block=("torch",))
    for cmd in ("fit", "pvf", "report", "stats"):
        assert f"  {cmd} " in r.stdout


def test_analysis_modules_import_no_torch():
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import diehardlab.analysis.fit, diehardlab.analysis.report, diehardlab.analysis.nvbitfi\n"
        "import diehardlab.analysis.stats, diehardlab.analysis.plots\n"
        "assert 'torch' not in sys.modules, 'analysis imported torch'"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


def test_documented_example_on_the_real_samples(tmp_path, beam_logs, facility_logs):
    """The command of docs/analysis.md and setups/analysis/chipir-2016-11.toml, as written."""
    from tests.conftest import ROOT

    r = run_diehard("fit", "--campaign", str(ROOT / "setups" / "analysis" / "chipir-2016-11.toml"), "--logs",
                    str(beam_logs), "--flux", str(facility_logs / "countlog-2016-11-24.txt"), "--flux",
                    str(facility_logs / "countlog-2016-11-27.txt"), "--out", str(tmp_path / "fit"),
                    block=("torch",))  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "9 runs (7 excluded)" in r.stdout
    assert r.stderr.count("EXCLUDED: no flux log covers") == 7
    # the two Darknet runs: two configurations of one board and benchmark, 2 SDC each
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("carol-k402/cudaDarknet/-/abft=") and " sdc " in ln]
    assert len(lines) == 2 and all(ln.split()[2] == "2" for ln in lines)
    r = run_diehard("report", "--fit", str(tmp_path / "fit"), "--out", str(tmp_path / "r.md"), block=("torch",))
    assert r.returncode == 0, r.stderr
    assert "carol-k402/cudaDarknet/-/abft=dumb_abft" in (tmp_path / "r.md").read_text()
