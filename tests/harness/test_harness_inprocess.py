"""Runner pieces in-process: reload after a faulty iteration, ECC detection, key files, option errors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from diehardlab.harness.device import detect_ecc, query_nvidia_smi_ecc
from diehardlab.harness.runner import Runner, RunOptions, parse_server, read_key

from diehardlab.errors import ConfigError
from diehardlab.formats import grammar
from diehardlab.formats.parser import summarize
from diehardlab.formats.writer import BenchmarkAborted
from tests.harness.conftest import only_log


def _runner(ckpt, golden, log_dir, beam=None, **kw) -> Runner:
    opts = RunOptions(ckpt_dir=ckpt, golden=golden, log_dir=log_dir, hostname="dut1", benchmark="b", **kw)
    r = Runner(opts, beam)
    r.prepare()
    return r


def _corrupt_weights(r: Runner) -> None:
    # A persistent fault: a weight in device memory changed (as an upset in a parameter would).
    with torch.no_grad():
        p = next(r.model.parameters())
        p.add_(0.5)


def test_reload_after_a_faulty_iteration_clears_a_persistent_fault(ckpt, golden, tmp_path):
    r = _runner(ckpt, golden, tmp_path, iterations=6, interval=1)
    _corrupt_weights(r)
    assert r.run() == 0
    s = summarize(only_log(tmp_path))
    assert s.sdc_count == 1 and s.sdc[0].iteration == 1 and s.ended
    assert r.reloads == 1 and s.last_iteration == 5
    assert "reload weights and inputs after Ite:0" in only_log(tmp_path).read_text()


def test_without_reload_a_persistent_fault_trips_the_libloghelper_abort(ckpt, golden, tmp_path):
    r = _runner(ckpt, golden, tmp_path, iterations=6, reload=False)
    _corrupt_weights(r)
    with pytest.raises(BenchmarkAborted):
        r.run()
    s = summarize(only_log(tmp_path))
    assert s.sdc_count == 2 and s.aborted == grammar.ABORT_EQUAL and s.ended


def test_corrupted_golden_inputs_in_memory_are_reloaded(ckpt, golden, tmp_path):
    r = _runner(ckpt, golden, tmp_path, iterations=4, interval=1)
    r.batches[0].mul_(-1.0)  # inputs corrupted in device memory
    r.run()
    s = summarize(only_log(tmp_path))
    assert s.sdc_count == 1 and r.reloads == 1


def _fake_nvidia_smi(tmp_path: Path, answer: str) -> str:
    exe = tmp_path / "nvidia-smi"
    exe.write_text(f"#!/bin/sh\necho '{answer}'\n")
    exe.chmod(0o755)
    return str(exe)


@pytest.mark.parametrize(("answer", "expected"), [("Enabled", True), ("Disabled", False), ("[N/A]", None)])
def test_nvidia_smi_ecc_answers(tmp_path, answer, expected):
    assert query_nvidia_smi_ecc(0, _fake_nvidia_smi(tmp_path, answer)) is expected


def test_ecc_state_prefers_nvidia_smi_over_the_flag(tmp_path):
    cuda = torch.device("cuda", 0)  # a device object only: nothing runs on it
    on = detect_ecc("off", cuda, _fake_nvidia_smi(tmp_path, "Enabled"))
    assert on.enabled and on.source == "nvidia-smi" and "ignored" in on.detail
    na = detect_ecc("on", cuda, _fake_nvidia_smi(tmp_path, "[N/A]"))
    assert na.enabled and na.source == "flag"
    cpu = detect_ecc("auto", torch.device("cpu"))
    assert not cpu.enabled and cpu.source == "default"
    with pytest.raises(ConfigError, match="--ecc"):
        detect_ecc("maybe", cpu and torch.device("cpu"))


def test_run_log_name_carries_the_ecc_flag(ckpt, golden, tmp_path):
    r = _runner(ckpt, golden, tmp_path, iterations=1, ecc="ON")
    r.run()
    assert only_log(tmp_path).name.endswith("_b_ECC_ON_dut1.log")


def test_key_files_hex_raw_and_permissions(tmp_path):
    k = tmp_path / "k"
    k.write_text("ab" * 32 + "\n")
    k.chmod(0o600)
    assert read_key(k) == bytes.fromhex("ab" * 32)
    k.write_bytes(b"not-hex secret\n")
    assert read_key(k) == b"not-hex secret"
    k.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        read_key(k)


@pytest.mark.parametrize("bad", ["nohost", "host:", "host:99999", ":1024"])
def test_bad_server_option(bad):
    with pytest.raises(ConfigError, match="HOST:PORT"):
        parse_server(bad)


def test_bad_hostname_is_refused_before_any_log(ckpt, golden, tmp_path):
    r = Runner(RunOptions(ckpt_dir=ckpt, golden=golden, log_dir=tmp_path / "l", hostname="a_b", benchmark="b"))
    with pytest.raises(ConfigError, match="--hostname"):
        r.prepare()
    assert not (tmp_path / "l").exists()


def test_missing_golden_says_how_to_make_one(ckpt, tmp_path):
    r = Runner(RunOptions(ckpt_dir=ckpt, golden=tmp_path / "none.pt", log_dir=tmp_path))
    with pytest.raises(Exception, match="diehard golden"):
        r.prepare()
    assert os.listdir(tmp_path) == []


def test_no_event_while_the_simulated_beam_is_off(ckpt, golden, tmp_path):
    import json
    import time

    from diehardlab.harness.beam import ANCHOR
    from diehardlab.harness.simulator import BeamSimulation

    from tests.harness.conftest import write_spec

    # A beam-off period that began a second ago and lasts a minute, with rates that would hit every iteration.
    phase = ((time.time() - ANCHOR) - 1.0) % 100.0
    spec = write_spec(tmp_path / "off.toml", {"corrupt": 1.0, "crash": 1.0},
                      off_every_s=100.0, off_duration_s=60.0, off_phase_s=phase)  # fmt: skip
    r = _runner(ckpt, golden, tmp_path / "logs", BeamSimulation.from_file(spec), iterations=20)
    assert r.run() == 0
    log = only_log(tmp_path / "logs")
    truth = json.loads(Path(str(log) + ".truth.json").read_text())
    assert truth["events"] == [] and truth["beam_on_kernel_time_s"] == 0.0 and truth["kernel_time_s"] > 0
    assert summarize(log).sdc_count == 0
    rows = Path(str(log) + ".chipir.txt").read_text().splitlines()[1:]
    assert rows and all(row.endswith(" 0.00") for row in rows)  # proton current 0 while off
    assert len({row.split()[6] for row in rows}) == 1  # the fission counter stalls


def test_unwritable_log_dir_is_a_clear_error(ckpt, golden, tmp_path):
    (tmp_path / "file").write_text("x")
    r = _runner(ckpt, golden, tmp_path / "file" / "logs", iterations=1)
    with pytest.raises(ConfigError, match="--log-dir"):
        r.run()
