"""The options of one run of the inference loop, and their checks (no torch here).

``diehard run`` checks its numbers with :func:`check_options` before it imports torch or reads a model, so a
typo costs a fraction of a second and one line; ``Runner.prepare`` checks the same for callers that build a
:class:`RunOptions` themselves. Every number must be finite: an infinite tolerance would accept every output,
an infinite or NaN duration would never stop, a zero cap would abort on the first error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from diehardlab.errors import ConfigError

DEFAULT_THRESHOLD = 1e-3  # absolute tolerance of a golden comparison, unless the golden file says otherwise


@dataclass
class RunOptions:
    ckpt_dir: Path
    golden: Path
    log_dir: Path
    hostname: str | None = None
    benchmark: str | None = None
    server: str | None = None  # HOST:PORT
    dut: str | None = None
    key_file: Path | None = None
    extended: bool = False  # extended datagrams even without a key (unsigned)
    interval: int = 10
    heartbeat_s: float = 5.0
    duration_s: float | None = None
    iterations: int | None = None
    threads: int | None = None
    ecc: str = "auto"
    device: str = "auto"
    threshold: float | None = None  # default: the golden file's
    reload: bool = True
    max_errors_per_iter: int = 500
    double_error_kill: bool = True
    once: bool = False
    output: Path | None = None  # --once: raw float32 outputs
    status_every_s: float = 60.0
    numerics: str | None = None  # default: the golden file's (the arithmetic the golden outputs were made in)


def check_threshold(value: float, where: str) -> float:
    """An absolute tolerance: finite and >= 0 (``where`` names its source: an option or a file's field)."""
    if not (isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value >= 0):
        raise ConfigError(f"{where} must be a finite number >= 0 (got {value!r}); an infinite one hides every SDC")
    return float(value)


def check_options(o: RunOptions) -> None:
    """Refuse numbers the loop cannot honour; each message names the option of ``diehard run``."""
    if o.interval < 1:
        raise ConfigError(f"--interval must be >= 1 (got {o.interval})")
    if not (math.isfinite(o.heartbeat_s) and o.heartbeat_s > 0):
        raise ConfigError(f"--heartbeat must be a finite number of seconds > 0 (got {o.heartbeat_s})")
    if o.duration_s is not None and not (math.isfinite(o.duration_s) and o.duration_s > 0):
        raise ConfigError(
            f"--duration must be a finite number of seconds > 0 (got {o.duration_s}); leave it out to run until SIGTERM"
        )
    if o.iterations is not None and o.iterations < 1:
        raise ConfigError(f"--iterations must be >= 1 (got {o.iterations}); leave it out to run until SIGTERM")
    if o.threads is not None and o.threads < 1:
        raise ConfigError(f"--threads must be >= 1 (got {o.threads}); leave it out for torch's default")
    if o.max_errors_per_iter < 1:
        raise ConfigError(f"--max-errors-per-iter must be >= 1 (got {o.max_errors_per_iter})")
    if o.threshold is not None:
        check_threshold(o.threshold, "--threshold")
    if not (math.isfinite(o.status_every_s) and o.status_every_s > 0):
        raise ConfigError(f"status interval must be > 0 seconds (got {o.status_every_s})")
