"""The bad-input battery of the harness commands: ``diehard run``, ``diehard golden``, ``diehard nvbitfi``.

Every case runs the real command in a fresh interpreter (``check_refused``): a non-zero exit, no traceback, one
line naming the option, file or field, and no output that looks complete. Options are checked before torch is
imported, so most cases cost a fraction of a second; the ones that must read a model or a golden file cost an
interpreter with torch each. Full and read-only folders are real tmpfs mounts (``tests/badinput/disks.py``).
Issue 18, items 6 and 11 (a runaway beam spec, a full disk and a removed log folder under ``diehard run``) are
at the end, with the process really running.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
from diehardlab.hardening.checkpoint import load_model
from diehardlab.harness.beam import load_spec
from diehardlab.harness.golden import load_golden
from diehardlab.harness.options import RunOptions, check_options

from diehardlab.errors import ConfigError, DataError
from diehardlab.formats.parser import read_lines, summarize
from tests.badinput.battery import check_refused
from tests.badinput.disks import full_folder, readonly_folder
from tests.harness.conftest import (
    kill_group,
    make_checkpoint,
    make_golden_file,
    only_log,
    start_diehard,
    wait_for,
    write_spec,
)

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("bad-ckpt") / "digits-small")


@pytest.fixture(scope="module")
def golden(ckpt, tmp_path_factory) -> Path:
    return make_golden_file(ckpt, tmp_path_factory.mktemp("bad-golden") / "golden.pt")


def run_args(ckpt: Path, golden: Path, log_dir: Path, *extra: str) -> tuple[str, ...]:
    return ("run", str(ckpt), "--golden", str(golden), "--log-dir", str(log_dir), "--hostname", "dut1",
            "--benchmark", "bad-input", *extra)  # fmt: skip


def copy_ckpt(ckpt: Path, dest: Path) -> Path:
    shutil.copytree(ckpt, dest)
    return dest


def no_log(log_dir: Path) -> bool:
    return not log_dir.exists() or not list(log_dir.glob("*.log"))


# -- diehard run: options (refused before torch is imported) -------------------------------------------------


# The cases, each through a real 'diehard run'.
RUN_OPTIONS = [
    (("--threshold", "inf"), "--threshold"),
    (("--threads", "-1"), "--threads"),
    (("--max-errors-per-iter", "0"), "--max-errors-per-iter"),
    (("--iterations", "0"), "--iterations"),
    (("--duration", "nan"), "--duration"),
    (("--duration", "-1"), "--duration"),
]


@pytest.mark.parametrize(("extra", "name"), RUN_OPTIONS, ids=[" ".join(c[0]) for c in RUN_OPTIONS])
def test_run_refuses_bad_numbers(extra, name, tmp_path):
    # The checkpoint and golden need not exist: the options are refused first, without loading anything.
    log_dir = tmp_path / "logs"
    r = check_refused(*run_args(tmp_path / "ck", tmp_path / "g.pt", log_dir, *extra), names=[name])
    assert no_log(log_dir) and len(r.lines) == 1


# More of our own, through the same check in process (a subprocess each would cost more than it proves).
MORE_RUN_OPTIONS = [
    ({"threshold": -1.0}, "--threshold"),
    ({"threshold": float("nan")}, "--threshold"),
    ({"threads": 0}, "--threads"),
    ({"iterations": -5}, "--iterations"),
    ({"duration_s": float("inf")}, "--duration"),
    ({"duration_s": 0.0}, "--duration"),
    ({"heartbeat_s": float("nan")}, "--heartbeat"),
    ({"heartbeat_s": float("inf")}, "--heartbeat"),
    ({"interval": 0}, "--interval"),
    ({"max_errors_per_iter": -3}, "--max-errors-per-iter"),
]


@pytest.mark.parametrize(("fields", "name"), MORE_RUN_OPTIONS, ids=[str(c[0]) for c in MORE_RUN_OPTIONS])
def test_run_options_are_checked_in_process_too(fields, name, tmp_path):
    opts = RunOptions(ckpt_dir=tmp_path, golden=tmp_path / "g.pt", log_dir=tmp_path, **fields)
    with pytest.raises(ConfigError, match=re.escape(name)):
        check_options(opts)


@pytest.mark.parametrize(
    ("case", "sigma", "beam", "name"),
    [
        ("inf-cross-section", {"corrupt": float("inf")}, {}, "cross_section_cm2 -> corrupt"),
        ("overflowing-rate", {"crash": 1e300}, {"flux_n_cm2_s": 1e300}, "cross_section_cm2"),
    ],
)
def test_run_refuses_a_beam_spec_with_infinite_numbers(case, sigma, beam, name, tmp_path):
    spec = write_spec(tmp_path / f"{case}.toml", sigma, **beam)
    r = check_refused(*run_args(tmp_path / "ck", tmp_path / "g.pt", tmp_path / "logs", "--simulate-beam", str(spec)),
                      names=[str(spec), name])  # fmt: skip
    assert len(r.lines) == 1


@pytest.mark.parametrize(
    ("sigma", "beam", "name"),
    [
        ({"nan": float("nan")}, {}, "cross_section_cm2 -> nan"),
        ({"corrupt": 1e-8}, {"flux_n_cm2_s": float("inf")}, "beam -> flux_n_cm2_s"),
        ({"corrupt": 1e-8}, {"flux_factor": float("nan")}, "beam -> flux_factor"),
        ({"corrupt": 1e-8}, {"off_every_s": float("inf")}, "beam -> off_every_s"),
    ],
)
def test_beam_specs_with_infinite_numbers_in_process(sigma, beam, name, tmp_path):
    spec = write_spec(tmp_path / "spec.toml", sigma, **beam)
    with pytest.raises(ConfigError, match=re.escape(name)) as e:
        load_spec(spec)
    assert str(spec) in str(e.value) and "\n" not in str(e.value)


def test_run_refuses_a_beam_spec_that_is_binary_or_a_folder(tmp_path):
    binary = tmp_path / "spec.toml"
    binary.write_bytes(b"\xff\xfe[beam]\x00\x81garbage")
    check_refused(*run_args(tmp_path / "ck", tmp_path / "g.pt", tmp_path / "logs", "--simulate-beam", str(binary)),
                  names=[str(binary), "UTF-8"])  # fmt: skip
    with pytest.raises(ConfigError, match="a folder, not a TOML file"):
        load_spec(tmp_path)


# -- damaged checkpoints and golden files (these load torch) ---------------------------------------------------


def test_run_refuses_an_empty_model_pt(ckpt, golden, tmp_path):
    bad = copy_ckpt(ckpt, tmp_path / "ck")
    (bad / "model.pt").write_bytes(b"")
    r = check_refused(*run_args(bad, golden, tmp_path / "logs", "--iterations", "1"),
                      names=[str(bad / "model.pt"), "empty"])  # fmt: skip
    assert no_log(tmp_path / "logs") and len(r.lines) == 1


def test_golden_refuses_a_model_pt_holding_python_objects_without_torchs_advice(ckpt, tmp_path):
    # A pickle that names a global: torch.load(weights_only=True) refuses it and advises weights_only=False,
    # which would run whatever the file says. That advice must not reach the user.
    bad = copy_ckpt(ckpt, tmp_path / "ck")
    torch.save({"conv.weight": torch.zeros(1), "extra": Path("x")}, bad / "model.pt")
    out = tmp_path / "golden.pt"
    r = check_refused("golden", str(bad), "--out", str(out), names=[str(bad / "model.pt")], outputs=[out])
    assert "weights_only" not in r.result.stderr and "pytorch.org" not in r.result.stderr
    assert len(r.lines) == 1


def _zip_truncated(ckpt: Path) -> bytes:
    return (ckpt / "model.pt").read_bytes()[:2000]


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (lambda ck: bytes(range(256)) * 12, "not a state_dict of model weights"),
        (_zip_truncated, "damaged, truncated or foreign"),
        (lambda ck: _saved([torch.zeros(2)]), "not a state_dict"),
        (lambda ck: _saved({"conv.weight": torch.zeros(1)}), "does not match the model in config.json (missing:"),
        (lambda ck: _saved({"x": torch.zeros(1), "y": Path("/")}), "holds Python objects besides tensors"),
    ],
    ids=["garbage", "truncated", "a-list", "other-model", "python-objects"],
)
def test_damaged_model_pt_in_process(ckpt, tmp_path, content, words):
    bad = copy_ckpt(ckpt, tmp_path / "ck")
    (bad / "model.pt").write_bytes(content(ckpt))
    with pytest.raises(DataError, match=re.escape(words)) as e:
        load_model(bad)
    msg = str(e.value)
    assert msg.startswith(str(bad / "model.pt")) and "\n" not in msg and "weights_only" not in msg


def _saved(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def test_run_refuses_a_config_json_that_is_not_utf8(ckpt, golden, tmp_path):
    bad = copy_ckpt(ckpt, tmp_path / "ck")
    (bad / "config.json").write_bytes(b'\xff\xfe{"model": \x81}')
    check_refused(*run_args(bad, golden, tmp_path / "logs", "--iterations", "1"),
                  names=[str(bad / "config.json"), "UTF-8"])  # fmt: skip
    assert no_log(tmp_path / "logs")


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("in_channels", "one", "'in_channels' must be an integer >= 1"),
        ("num_classes", 0, "'num_classes' must be an integer >= 1"),
        ("in_channels", True, "'in_channels' must be an integer >= 1"),
        ("dataset", ["digits"], "'dataset' must be a dataset name"),
        ("model", "smallnet", "model"),
    ],
)
def test_mistyped_config_json_fields(ckpt, tmp_path, field, value, words):
    # In process: 'diehard golden', 'run', 'select', 'evaluate' and 'sfi' all load a checkpoint with load_model
    # (the non-UTF-8 case above goes through a real 'diehard run').
    bad = copy_ckpt(ckpt, tmp_path / "ck")
    cfg = json.loads((bad / "config.json").read_text())
    cfg[field] = value
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(DataError if field != "model" else ConfigError, match=re.escape(words)) as e:
        load_model(bad)
    assert str(bad / "config.json") in str(e.value) and "\n" not in str(e.value)


def test_config_json_that_is_not_an_object_or_a_file(ckpt, tmp_path):
    bad = copy_ckpt(ckpt, tmp_path / "ck")
    (bad / "config.json").write_text("[1, 2]\n")
    with pytest.raises(DataError, match="not a JSON object"):
        load_model(bad)
    (bad / "config.json").unlink()
    (bad / "config.json").mkdir()
    with pytest.raises(DataError, match="not a checkpoint folder"):
        load_model(bad)


def _golden_with(golden: Path, dest: Path, **fields) -> Path:
    rec = torch.load(golden, weights_only=True)
    rec.update(fields)
    torch.save(rec, dest)
    return dest


def test_run_refuses_golden_files_with_bad_fields(ckpt, golden, tmp_path):
    bad = _golden_with(golden, tmp_path / "inf.pt", threshold=float("inf"))
    check_refused(*run_args(ckpt, bad, tmp_path / "logs", "--iterations", "1"), names=[str(bad), "threshold"])
    assert no_log(tmp_path / "logs")


@pytest.mark.parametrize(
    ("fields", "name"),
    [
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": 2.5}, "batch_size"),
        ({"threshold": float("nan")}, "threshold"),
        ({"threshold": "1e-3"}, "threshold"),
        ({"outputs": torch.full((16, 10), float("nan"))}, "outputs"),
        ({"inputs": torch.zeros(16, 64)}, "inputs"),
        ({"labels": torch.zeros(15, dtype=torch.long)}, "disagree"),
        ({"model_hash": 7}, "model_hash"),
    ],
    ids=lambda v: str(v)[:30],
)
def test_golden_fields_are_checked_in_process(golden, tmp_path, fields, name):
    bad = _golden_with(golden, tmp_path / "bad.pt", **fields)
    with pytest.raises(DataError, match=re.escape(name)) as e:
        load_golden(bad)
    assert str(bad) in str(e.value) and "\n" not in str(e.value)


# -- read-only and full output folders ------------------------------------------------------------------------


def test_golden_out_on_a_read_only_or_nearly_full_disk(ckpt, tmp_path):
    with readonly_folder(tmp_path / "ro") as ro:
        out = ro / "golden.pt"
        check_refused("golden", str(ckpt), "--out", str(out), names=[str(out), "--out", "read-only"], outputs=[out])
    # Room for the write test, not for the golden file (~20 KiB): torch.save fails half way. No golden.pt, and
    # no half file under any name.
    with full_folder(tmp_path / "full", free=8192) as full:
        out = full / "golden.pt"
        check_refused("golden", str(ckpt), "--out", str(out), names=[str(out), "No space left"], outputs=[out])
        assert sorted(p.name for p in full.iterdir()) == ["filler"]


def test_nvbitfi_out_read_only_or_full(ckpt, golden, tmp_path):
    with readonly_folder(tmp_path / "ro") as ro:
        out = ro / "workload"
        check_refused("nvbitfi", "setup", str(ckpt), "--golden", str(golden), "--out", str(out),
                      names=["--out", str(out)], outputs=[out / "run.sh"])  # fmt: skip
    with full_folder(tmp_path / "full") as full:
        check_refused("nvbitfi", "setup", str(ckpt), "--golden", str(golden), "--out", str(full),
                      names=["--out", "No space left"],
                      outputs=[full / "run.sh", full / "params_entry.py"])  # fmt: skip
        assert sorted(p.name for p in full.iterdir()) == ["filler"]


# -- issue 18 item 6: a runaway beam spec ---------------------------------------------------------------------


def test_a_huge_cross_section_cannot_hang_the_run(ckpt, golden, tmp_path):
    # 1e30 cm^2 at 1e6 n/cm^2/s: ~1e33 corrupt events per millisecond iteration. The schedule used to draw them
    # all (endless, gigabytes, SIGTERM never seen). Now each iteration takes at most 64 of them, and a spec that
    # keeps saturating the device stops the run in one line naming it: it measures nothing.
    spec = write_spec(tmp_path / "huge.toml", {"corrupt": 1e30})
    log_dir = tmp_path / "logs"
    check_refused(*run_args(ckpt, golden, log_dir, "--simulate-beam", str(spec), "--interval", "1",
                            "--no-double-error-kill", "--threads", "1"),
                  names=["--simulate-beam", str(spec), "saturates"], timeout=90)  # fmt: skip
    log = only_log(log_dir)
    s = summarize(log)
    # The 10th saturated iteration is refused before its events act: 9 #SDC lines.
    assert s.ended and s.stop_reason.startswith("error (--simulate-beam") and s.sdc_count == 9
    truth = json.loads(Path(str(log) + ".truth.json").read_text())
    assert truth["ended"] == "error" and truth["saturated_iterations"] == 10
    assert truth["events_skipped_expected"] > 1e20  # ~1e36 events/s: counted, never drawn
    per_iteration = Counter(e["iteration"] for e in truth["events"])
    assert max(per_iteration.values()) == truth["event_cap_per_iteration"] == 64


def test_sigterm_stops_a_run_under_a_saturating_spec(ckpt, golden, tmp_path):
    # In process: SIGTERM arrives during the third saturated iteration; the loop sees it at the iteration's end.
    from diehardlab.harness.runner import Runner
    from diehardlab.harness.simulator import BeamSimulation

    class Terminated(BeamSimulation):
        def inject(self, outs, kt, iteration):
            outs = super().inject(outs, kt, iteration)
            if iteration == 2:
                os.kill(os.getpid(), signal.SIGTERM)  # the runner's handler takes it (restored after run())
            return outs

    spec = write_spec(tmp_path / "huge.toml", {"corrupt": 1e30})
    opts = RunOptions(ckpt_dir=ckpt, golden=golden, log_dir=tmp_path / "logs", hostname="dut1", benchmark="b",
                      interval=1, double_error_kill=False)  # fmt: skip
    r = Runner(opts, Terminated(load_spec(spec), spec))
    r.prepare()
    assert r.run() == 0
    s = summarize(only_log(tmp_path / "logs"))
    assert s.stop_reason == "SIGTERM" and s.ended and s.sdc_count == 3


# -- issue 18 item 11: a full disk and a removed log folder under a running 'diehard run' ------------------------

IT_OR_OTHER = re.compile(r"^#(HEADER|BEGIN|INF|IT|SDC|ERR|ABORT|END)( .*)?$")


def test_run_on_a_disk_that_fills_up_stops_cleanly_without_a_torn_line(ckpt, golden, tmp_path):
    with full_folder(tmp_path / "logs", free=4096) as log_dir:
        r = check_refused(*run_args(ckpt, golden, log_dir, "--interval", "1", "--iterations", "100000",
                                    "--threads", "1"), names=["No space left", "--log-dir"])  # fmt: skip
        log = only_log(log_dir)
        raw = log.read_bytes()
        assert raw.endswith(b"\n"), raw[-200:]  # no torn last line
        lines = raw.decode("ascii").splitlines()
        assert all(IT_OR_OTHER.match(ln) for ln in lines), [ln for ln in lines if not IT_OR_OTHER.match(ln)][:3]
        its = [ln for ln in lines if ln.startswith("#IT ")]
        assert len(its) > 10 and f"iteration {len(its)}" in r.result.stderr


def test_run_notices_its_log_folder_removed_and_restores_the_log(ckpt, golden, tmp_path):
    log_dir = tmp_path / "logs"
    proc = start_diehard(*run_args(ckpt, golden, log_dir, "--interval", "20", "--threads", "1"))
    try:
        assert wait_for(lambda: list(log_dir.glob("*.log")), timeout=40)
        name = only_log(log_dir).name
        time.sleep(0.3)
        shutil.rmtree(log_dir)
        # Noticed while running (at most a second later), not only at the end.
        assert wait_for(lambda: (log_dir / name).is_file(), timeout=10), "the removed log was not restored"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    finally:
        kill_group(proc)
    assert proc.returncode == 0, err
    log = log_dir / name
    lines = read_lines(log)
    s = summarize(log)
    assert lines[0].startswith("#HEADER ") and s.ended and s.stop_reason == "SIGTERM"
    assert any(ln.startswith("#INF log file was removed") for ln in lines)
    assert "log file was removed" in err and "Traceback" not in err


def test_the_simulators_files_come_back_after_the_log_folder_is_removed(tmp_path):
    # The facility log is append-only like the DUT log (restored from its open descriptor); the truth file is
    # rewritten whole at every save (its folder re-created).
    from diehardlab.harness.beam import ANCHOR, BeamTable, ChipirLog, TruthFile

    spec = load_spec(write_spec(tmp_path / "s.toml", {"corrupt": 1e-8}))
    log = tmp_path / "logs" / "x.log"
    log.parent.mkdir()
    start = ANCHOR + 86400.0
    facility = ChipirLog(log, BeamTable(flux_n_cm2_s=1e6, flux_factor=1e5, row_interval_s=1.0), start)
    facility.advance(start + 5)
    truth = TruthFile(log, spec, "s.toml", 1, 0)
    before = facility.path.read_text()
    shutil.rmtree(log.parent)
    facility.advance(start + 10)
    truth.save(1.0, 2.0)
    facility.close(start + 10)
    after = facility.path.read_text()
    assert after.startswith(before) and len(after.splitlines()) == len(before.splitlines()) + 6
    assert json.loads(truth.path.read_text())["kernel_time_s"] == 2.0


def test_a_full_disk_under_the_beam_simulator_stops_the_run_in_one_line(ckpt, golden, tmp_path):
    # In process (the subprocess case is above): the truth file and the facility log share the log's disk; a
    # failure in either ends the run as one ConfigError, with every file whole.
    from diehardlab.harness.runner import Runner
    from diehardlab.harness.simulator import BeamSimulation

    spec = write_spec(tmp_path / "s.toml", {"corrupt": 1e-3})  # ~1 event per iteration: a truth save each
    with full_folder(tmp_path / "logs", free=16384) as log_dir:
        opts = RunOptions(ckpt_dir=ckpt, golden=golden, log_dir=log_dir, hostname="dut1", benchmark="b",
                          iterations=1_000_000, interval=1, double_error_kill=False)  # fmt: skip
        r = Runner(opts, BeamSimulation.from_file(spec))
        r.prepare()
        with pytest.raises(ConfigError, match="No space left on device") as e:
            r.run()
        assert "--log-dir" in str(e.value) and "\n" not in str(e.value)
        log = only_log(log_dir)
        assert log.read_bytes().endswith(b"\n")
        truth = json.loads(Path(str(log) + ".truth.json").read_text())  # complete JSON: written then renamed
        assert truth["ended"] in (None, "log-write-failed") and not list(log_dir.glob("*.tmp"))
