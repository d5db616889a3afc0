"""The one command, lazy component imports, and what the distribution installs (one import name)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from diehardlab.cli import COMPONENTS, registry
from tests.conftest import run_diehard


def test_help_lists_every_registered_command():
    out = run_diehard("--help")
    assert out.returncode == 0, out.stderr
    for name in registry():
        assert f"  {name} " in out.stdout


@pytest.mark.parametrize("name", sorted(registry()))
def test_every_command_has_help(name):
    out = run_diehard(name, "--help")
    assert out.returncode == 0, out.stderr
    assert f"usage: diehard {name}" in out.stdout


def test_server_and_analysis_commands_start_without_torch():
    # The beam-room server and the analysis laptop have no torch: their commands must not import it.
    table = registry()
    names = [n for n, (comp, _) in table.items() if comp in ("diehardlab.watchdog", "diehardlab.analysis")]
    assert "logs" in names
    for name in names:
        out = run_diehard(name, "--help", block=("torch", "torchvision"))
        assert out.returncode == 0, f"diehard {name} --help imports torch:\n{out.stderr}"


def test_logs_runs_with_nothing_but_the_standard_library(beam_logs):
    out = run_diehard("logs", str(beam_logs), block=("torch", "numpy", "pandas", "scipy", "paramiko"))
    assert out.returncode == 0, out.stderr
    assert "9 logs, 15 SDC records, 0 unparsed lines" in out.stdout


@pytest.mark.parametrize("component", list(COMPONENTS))
def test_python_dash_m_component(component):
    out = subprocess.run([sys.executable, "-m", component, "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert f"python -m {component}" in out.stdout


def test_unknown_command_is_a_clear_error():
    out = run_diehard("lgos")
    assert out.returncode == 2 and "unknown command 'lgos'" in out.stderr and "logs" in out.stderr


def test_missing_dependency_message_names_the_extra_to_install():
    from diehardlab.cli import _missing_dependency

    msg = _missing_dependency(ModuleNotFoundError("No module named 'paramiko'", name="paramiko"), "diehardlab.watchdog")
    assert "pip install 'diehardlab[server]'" in msg
