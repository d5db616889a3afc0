"""Fixtures of the harness tests: a tiny digits checkpoint folder (hardening's layout), its golden file, specs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from diehardlab.hardening.checkpoint import save_config, save_model
from diehardlab.hardening.models import ModelConfig, build_model
from diehardlab.harness.golden import make_golden, save_golden

from tests.conftest import BLOCK_IMPORTS, ROOT


def make_checkpoint(folder: Path, seed: int = 0, width: int = 8) -> Path:
    """A checkpoint folder as 'diehard train' writes it (config.json + model.pt), untrained but seeded."""
    torch.manual_seed(seed)
    cfg = ModelConfig(arch="smallnet", width=width)
    model = build_model(cfg, 1, 10).eval()
    save_config(
        folder,
        {"model": cfg.to_dict(), "dataset": "digits", "in_channels": 1, "num_classes": 10, "seed": seed,
         "diehardlab_version": "0.1.0"},
    )  # fmt: skip
    save_model(folder, model)
    return folder


@pytest.fixture(scope="session")
def ckpt(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "digits-small")


def make_golden_file(ckpt: Path, out: Path) -> Path:
    """The golden file of ``ckpt`` as 'diehard golden' writes it: 16 digits images in batches of 8."""
    save_golden(make_golden(ckpt, samples=16, batch_size=8), out)
    return out


@pytest.fixture(scope="session")
def golden(ckpt, tmp_path_factory) -> Path:
    return make_golden_file(ckpt, tmp_path_factory.mktemp("golden") / "golden.pt")


def write_spec(path: Path, cross_sections: dict[str, float], **beam) -> Path:
    """A beam spec with a flux of 1e6 n/cm^2/s and the given cross sections."""
    b = {"name": "test", "flux_n_cm2_s": 1e6, "flux_factor": 1e5, "row_interval_s": 0.5, **beam}
    lines = ["seed = 11", "[beam]"]
    lines += [f"{k} = {v!r}" if not isinstance(v, str) else f'{k} = "{v}"' for k, v in b.items()]
    lines += ["[cross_section_cm2]"] + [f"{k} = {v!r}" for k, v in cross_sections.items()]
    lines += ["[corrupt]", 'kind = "mix"', "magnitude = [8.0, 64.0]"]
    path.write_text("\n".join(lines) + "\n")
    return path


def diehard_cmd(*args: str) -> list[str]:
    return [sys.executable, "-c", BLOCK_IMPORTS, "-", *args]


def start_diehard(*args: str, cwd: Path | None = None) -> subprocess.Popen:
    """``diehard ARGS`` as a real subprocess in its own process group (as the watchdog starts it)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen(
        diehard_cmd(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd, env=env,
        start_new_session=True,
    )  # fmt: skip


def kill_group(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)


def wait_for(predicate, timeout: float = 30.0, step: float = 0.05) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


def only_log(log_dir: Path) -> Path:
    logs = sorted(log_dir.glob("*.log"))
    assert len(logs) == 1, logs
    return logs[0]
