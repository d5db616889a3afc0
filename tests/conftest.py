"""Shared fixtures: where the real campaign samples are, and a helper to run ``diehard`` as a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Real samples from past campaigns, copied into the repository (tests/data/README.md says where from).
SHARED_DATA = Path(os.environ.get("DIEHARD_SAMPLE_DATA", ROOT / "tests" / "data"))
BEAM_LOGS = SHARED_DATA / "beam-logs"
FACILITY = SHARED_DATA / "facility"
SUITE = SHARED_DATA / "dnn-benchmarks"
# The shared sample folder beside the checkout (the benchmark suite's other released lists), when present.
SHARED_SUITE = next(
    (
        p / "dnn-benchmarks"
        for p in (ROOT.parent / "shared" / "data", ROOT.parents[1] / "shared" / "data")
        if (p / "dnn-benchmarks").is_dir()
    ),
    None,
)


@pytest.fixture
def beam_logs() -> Path:
    if not BEAM_LOGS.is_dir():
        pytest.skip(f"the real beam-log samples are not here ({BEAM_LOGS}); set DIEHARD_SAMPLE_DATA")
    return BEAM_LOGS


@pytest.fixture
def facility_logs() -> Path:
    if not FACILITY.is_dir():
        pytest.skip(f"the real facility logs are not here ({FACILITY}); set DIEHARD_SAMPLE_DATA")
    return FACILITY


@pytest.fixture
def suite_data() -> Path:
    """The benchmark suite's ResNet-20 weights, fault list and architecture facts (tests/data/dnn-benchmarks)."""
    if not (SUITE / "ResNet20.th").is_file():
        pytest.skip(f"the benchmark suite's samples are not here ({SUITE}); set DIEHARD_SAMPLE_DATA")
    return SUITE


def _site_packages() -> Path | None:
    import importlib.util

    spec = importlib.util.find_spec("torch")  # finds, does not import
    return Path(spec.origin).parents[1] if spec and spec.origin else None


@pytest.fixture
def foolbox_images() -> Path:
    """The 20 real CIFAR-10 (and CIFAR-100 ...) test images inside the foolbox wheel: <dataset>_<NN>_<label>.png."""
    site = _site_packages()
    folder = site / "foolbox" / "data" if site else None
    if folder is None or not (folder / "cifar10_00_3.png").is_file():
        pytest.skip("the foolbox wheel (20 real CIFAR-10 test images) is not installed: pip install --no-deps foolbox")
    return folder


# Makes "import <name>" fail for the named top-level packages, as on a machine that lacks them.
BLOCK_IMPORTS = """
import sys
class _Block:
    def __init__(self, names): self.names = set(names)
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in self.names:
            raise ImportError(f"{name} is blocked by the test (not installed on this machine role)")
        return None
sys.meta_path.insert(0, _Block(sys.argv[1].split(',')))
from diehardlab.cli import main
raise SystemExit(main(sys.argv[2:]))
"""


def run_diehard(
    *args: str, block: tuple[str, ...] = (), cwd: Path | None = None, timeout: float = 120, env=None
) -> subprocess.CompletedProcess:
    """Run ``diehard ARGS`` in a fresh interpreter, optionally with some top-level packages unimportable."""
    cmd = [sys.executable, "-c", BLOCK_IMPORTS, ",".join(block) or "-", *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=timeout, env=env)
