"""libLogHelper log file names: ``%Y_%m_%d_%H_%M_%S_<benchmark>[_ECC_<ON|OFF>]_<hostname>.log``.

libLogHelper stamps the name with the DUT's local time; logs written before 2017 have no ``_ECC_`` part,
and then the host is what follows the last ``_`` (host names may hold ``-`` but not ``_``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

# Names that become path components (a DUT's folders, a benchmark's output file, a log file name): plain words,
# never ".", "..", a separator or a leading "-" (an option to ping or ssh) or "." (a hidden file). DUT, benchmark,
# switch and campaign names follow PLAIN_NAME; the host field of a log name follows HOSTNAME (no "_": names
# split on it).
PLAIN_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]{0,31}"
HOSTNAME = r"[A-Za-z0-9][A-Za-z0-9.-]{0,63}"


def name_problem(value: str, pattern: str = PLAIN_NAME) -> str | None:
    """Why ``value`` cannot be one of those names (None when it can), in words for an error message."""
    if re.fullmatch(pattern, value):
        return None
    what = "letters, digits, '.' and '-'" + (", '_'" if pattern == PLAIN_NAME else " (no '_')")
    limit = 32 if pattern == PLAIN_NAME else 64
    return f"use {what}, starting with a letter or digit, at most {limit} characters (it becomes a file name)"


_NAME = re.compile(r"^(\d{4})_(\d{2})_(\d{2})_(\d{2})_(\d{2})_(\d{2})_(.+)\.log$")


@dataclass(frozen=True, slots=True)
class LogName:
    started: datetime  # naive: the clock of whoever wrote the name (libLogHelper: DUT local; ours: UTC)
    benchmark: str
    ecc: str | None  # "ON", "OFF" or None for names without the field
    hostname: str


def format_log_name(started: datetime, benchmark: str, ecc: bool, hostname: str) -> str:
    if "_ECC_" in benchmark or "/" in benchmark or "/" in hostname:
        raise ValueError(f"benchmark {benchmark!r} or host {hostname!r} cannot appear in a log file name")
    stamp = started.strftime("%Y_%m_%d_%H_%M_%S")
    return f"{stamp}_{benchmark}_ECC_{'ON' if ecc else 'OFF'}_{hostname}.log"


def parse_log_name(path: str | Path) -> LogName | None:
    """The fields of a log file name, or None when the name does not follow the convention."""
    m = _NAME.match(Path(path).name)
    if not m:
        return None
    try:
        started = datetime(*(int(g) for g in m.groups()[:6]))
    except ValueError:
        return None
    rest = m.group(7)
    if "_ECC_" in rest:
        benchmark, _, tail = rest.rpartition("_ECC_")
        ecc, sep, host = tail.partition("_")
        if not sep or ecc not in ("ON", "OFF") or not benchmark:
            return None
        return LogName(started, benchmark, ecc, host)
    benchmark, sep, host = rest.rpartition("_")
    if not sep or not benchmark:
        return None
    return LogName(started, benchmark, None, host)
