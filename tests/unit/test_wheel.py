"""What the distribution installs: one top-level import name, and nothing that shadows another library.

The component folders (harness/, hardening/, watchdog/, analysis/, demo/) are mapped onto ``diehardlab.<name>`` by
pyproject.toml. These tests build the real wheel from a copy of the source tree and install it into a fresh
virtual environment beside the real ``watchdog`` library from PyPI, whose name our folder shares.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

from tests.conftest import BEAM_LOGS, ROOT
from tests.unit.test_structure import _package_dirs

pytestmark = pytest.mark.slow
WHEEL_CACHE = ROOT / ".cache" / "wheels"  # .ci/run downloads the watchdog wheel here


def _run(cmd: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    assert out.returncode == 0, f"{cmd} failed:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}"
    return out


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("src")
    ignore = shutil.ignore_patterns(".git", ".venv", ".cache", "build", "dist", "*.egg-info", "__pycache__", "data")
    for item in ROOT.iterdir():
        if item.name in (".git", ".venv", ".cache", "build", "dist") or item.name.endswith(".egg-info"):
            continue
        (shutil.copytree(item, src / item.name, ignore=ignore) if item.is_dir() else shutil.copy2(item, src))
    out = tmp_path_factory.mktemp("wheel")
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out), str(src)],
         cwd=src)  # fmt: skip
    (whl,) = out.glob("diehardlab-*.whl")
    return whl


def test_the_wheel_holds_one_top_level_package(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"diehardlab"}, tops
    # Every module of every mapped folder lands at its mapped place (a subpackage missing from pyproject's list
    # would install without its files).
    for pkg, folder in _package_dirs().items():
        for f in folder.rglob("*.py"):
            arcname = "/".join([*pkg.split("."), *f.relative_to(folder).parts])
            assert arcname in names, f"{f.relative_to(ROOT)} is not in the wheel (as {arcname})"


def _watchdog_wheel() -> Path:
    found = sorted(WHEEL_CACHE.glob("watchdog-*.whl"))
    if not found:
        WHEEL_CACHE.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
               "-d", str(WHEEL_CACHE), "watchdog"]  # fmt: skip
        try:
            subprocess.run(cmd, capture_output=True, timeout=120, check=True)
        except (subprocess.SubprocessError, OSError) as exc:
            pytest.skip(f"the watchdog wheel is not in {WHEEL_CACHE} and PyPI cannot be reached ({exc})")
        found = sorted(WHEEL_CACHE.glob("watchdog-*.whl"))
    return found[-1]


def test_installs_beside_the_watchdog_library_and_uninstalls_without_touching_it(wheel, tmp_path):
    lib = _watchdog_wheel()
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    pip = [str(py), "-m", "pip", "install", "-q", "--no-index", "--no-deps"]
    _run([*pip, str(lib)], cwd=tmp_path)
    _run([*pip, str(wheel)], cwd=tmp_path)
    site = Path(
        _run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path).stdout.strip()
    )
    assert "diehardlab" not in (site / "watchdog" / "__init__.py").read_text()
    # Both work, from a folder that holds neither: the library's observer API and our commands.
    _run([str(py), "-c", "from watchdog.observers import Observer; from watchdog.events import FileSystemEventHandler"],
         cwd=tmp_path)  # fmt: skip
    out = _run([str(py), "-m", "diehardlab.watchdog", "--help"], cwd=tmp_path).stdout
    assert "python -m diehardlab.watchdog" in out and "serve" in out
    logs = _run([str(env_dir / "bin" / "diehard"), "logs", str(BEAM_LOGS)], cwd=tmp_path).stdout
    assert "15 SDC records" in logs
    _run([str(py), "-m", "pip", "uninstall", "-q", "-y", "diehardlab"], cwd=tmp_path)
    _run([str(py), "-c", "from watchdog.observers import Observer; import watchdog.events"], cwd=tmp_path)
    gone = subprocess.run([str(py), "-c", "import diehardlab"], cwd=tmp_path, capture_output=True, timeout=60)
    assert gone.returncode != 0
    assert not (site / "diehardlab").exists()


def test_the_editable_install_serves_only_diehardlab(tmp_path):
    # From a folder outside the checkout, the editable install maps diehardlab.<component> onto the folders and
    # puts no bare "harness" or "watchdog" on the path (the dev environment has no watchdog library).
    code = (
        "import diehardlab.harness.runner, diehardlab.watchdog.journal, diehardlab.analysis.intervals\n"
        "import importlib.util as u\n"
        "print([n for n in ('harness', 'hardening', 'watchdog', 'analysis', 'demo') if u.find_spec(n) is not None])\n"
    )
    out = _run([sys.executable, "-c", code], cwd=tmp_path).stdout.strip()
    assert out == "[]"
