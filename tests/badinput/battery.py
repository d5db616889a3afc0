"""The bad-input battery: what every ``diehard`` subcommand must do with input it cannot use.

Each component's cases live in ``tests/badinput/test_<component>.py`` and go through :func:`check_refused`:
a non-zero exit, no traceback, one clear line on stderr that names what is wrong, and no output file that looks
complete (an output that exists afterwards must be one the case says was there before).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import run_diehard


@dataclass
class Refusal:
    argv: list[str]
    result: subprocess.CompletedProcess
    lines: list[str] = field(default_factory=list)


def check_refused(
    *argv: str,
    names: Iterable[str] = (),
    outputs: Iterable[Path] = (),
    cwd: Path | None = None,
    timeout: float = 120,
    env: dict[str, str] | None = None,
) -> Refusal:
    """Run ``diehard ARGV`` and assert it refuses cleanly.

    ``names``: words the error line must contain (the file, field or option at fault).
    ``outputs``: paths the command would write; none may exist afterwards unless it existed before (with the
    same bytes).
    """
    outputs = list(outputs)
    before = {p: p.read_bytes() for p in outputs if p.is_file()}
    r = run_diehard(*argv, cwd=cwd, timeout=timeout, env=env)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    shown = f"diehard {' '.join(argv)}\nexit {r.returncode}\nstdout:\n{r.stdout[-1500:]}\nstderr:\n{r.stderr[-3000:]}"
    assert r.returncode != 0, f"accepted bad input:\n{shown}"
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout, f"traceback on bad input:\n{shown}"
    errors = [ln for ln in lines if "error" in ln.lower() or ln.startswith("diehard ") or ln.startswith("usage:")]
    assert lines, f"no message on bad input:\n{shown}"
    assert len(errors) <= 2, f"more than one error line:\n{shown}"
    for word in names:
        assert word in r.stderr, f"the error does not name {word!r}:\n{shown}"
    for p in outputs:
        if p in before:
            assert p.is_file() and p.read_bytes() == before[p], f"{p} was changed by a refused command:\n{shown}"
        else:
            assert not p.exists(), f"{p} was written by a refused command:\n{shown}"
    return Refusal(list(argv), r, lines)
