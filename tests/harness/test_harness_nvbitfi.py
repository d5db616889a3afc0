"""``diehard nvbitfi setup``: the generated scripts, run here on the CPU as NVBitFI would run them."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from diehardlab.harness import nvbitfi
from diehardlab.harness.nvbitfi import CHECK_FILES, judge
from diehardlab.harness.outdiff import diff_lines

from tests.harness.conftest import write_spec

pytestmark = pytest.mark.timeout(180)


def _injection_run(app_dir: Path, workdir: Path, *extra: str) -> dict[str, str]:
    """What NVBitFI does per injection: run.sh in a fresh folder (PRELOAD_FLAG set), then sdc_check.sh."""
    workdir.mkdir(parents=True)
    env = dict(os.environ, PRELOAD_FLAG="", APP_DIR=str(app_dir))
    subprocess.run(["bash", str(app_dir / "run.sh"), *extra], cwd=workdir, env=env, check=True, timeout=120)
    return judge(workdir, app_dir / "sdc_check.sh", app_dir)


def test_setup_then_clean_run_is_masked_and_injected_change_is_an_sdc(ckpt, golden, tmp_path):
    app_dir = tmp_path / "nvbitfi-app"
    # In-process (one interpreter less); the clean run below is the check --no-verify skips.
    assert nvbitfi.main(["setup", str(ckpt), "--golden", str(golden), "--out", str(app_dir), "--app", "dh",
                         "--no-verify"]) == 0  # fmt: skip
    for name in ("run.sh", "sdc_check.sh", "golden_stdout.txt", "golden_stderr.txt", "golden_output.bin"):
        assert (app_dir / name).is_file(), name
    assert os.access(app_dir / "run.sh", os.X_OK)
    entry = (app_dir / "params_entry.py").read_text()
    apps: dict = {}
    exec(compile(entry, "params_entry.py", "exec"), {"apps": apps})  # it must be valid Python for params.py
    assert apps["dh"][0] == str(app_dir) and apps["dh"][1] == "dh" and apps["dh"][4] == ""
    assert "Log file path" not in (app_dir / "golden_stdout.txt").read_text()

    clean = _injection_run(app_dir, tmp_path / "inj-clean")
    assert clean == dict.fromkeys(CHECK_FILES, "")  # masked
    log_line = next(ln for ln in (tmp_path / "inj-clean" / "stdout.txt").read_text().splitlines()
                    if ln.startswith("Log file path "))  # fmt: skip
    assert Path(log_line.removeprefix("Log file path ")).is_file()

    # An output change during the run (the beam simulator, certain to corrupt the first iteration).
    spec = write_spec(tmp_path / "certain.toml", {"corrupt": 1e-2})
    sdc = _injection_run(app_dir, tmp_path / "inj-sdc", "--simulate-beam", str(spec))
    assert sdc["diff.log"] and "elements differ by more than 0.001" in sdc["diff.log"]
    assert sdc["special_check.log"].startswith("result: SDC errors:")
    assert sdc["stdout_diff.log"] and not sdc["stderr_diff.log"]


def test_outdiff_tolerance_nan_and_sizes(tmp_path):
    import struct

    g, o = tmp_path / "g.bin", tmp_path / "o.bin"
    g.write_bytes(struct.pack("<4f", 1.0, 2.0, 3.0, 4.0))
    o.write_bytes(struct.pack("<4f", 1.0005, 2.0, float("nan"), 4.5))
    lines = diff_lines(o, g, 1e-3)
    assert lines[0].startswith("element 2:") and lines[1].startswith("element 3:") and lines[-1].startswith("2 of 4")
    o.write_bytes(struct.pack("<3f", 1.0, 2.0, 3.0))
    assert diff_lines(o, g, 1e-3) == ["output has 3 values, golden 4"]
    assert diff_lines(g, g, 0.0) == []
