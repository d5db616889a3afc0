"""An inventory of a folder of libLogHelper logs (``diehard logs DIR``), one row per file.

Pure standard library (the parser of :mod:`diehardlab.formats`), so it runs on any machine role.
Large folders are read by a pool of processes; each worker returns only the row, not the records.
"""

from __future__ import annotations

import csv
import os
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from datetime import tzinfo
from pathlib import Path
from typing import TypeVar

from diehardlab.cli import make_parser
from diehardlab.errors import ConfigError, DataError
from diehardlab.formats.parser import LogSummary, summarize
from diehardlab.outfiles import write_text_stream
from diehardlab.timezones import get_zone, to_utc

T = TypeVar("T")
R = TypeVar("R")

COLUMNS = [
    "path", "benchmark", "host", "ecc", "start_written", "start_source", "start_utc", "iterations",
    "acc_time_s", "kernel_time_s", "sdc", "critical_sdc", "tolerable_sdc", "err_lines", "aborted", "ended",
    "due_reason", "unparsed_lines",
]  # fmt: skip


def find_files(
    paths: Sequence[Path], pattern: str = "*.log", hint: str = "give the folder that holds the .log files"
) -> list[Path]:
    """Each path that is a file, and the files matching ``pattern`` anywhere under each folder, in order."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_file():
            out.append(p)
        elif p.is_dir():
            out += sorted(q for q in p.rglob(pattern) if q.is_file())
        else:
            raise DataError(f"{p}: no such folder or file; {hint}")
    return out


def find_logs(root: Path, pattern: str = "*.log") -> list[Path]:
    return find_files([root], pattern)


def row_of(s: LogSummary, root: Path, dut_zone: tzinfo | None) -> dict[str, object]:
    if s.begin is not None:
        start, source = s.begin, "#BEGIN"
    elif s.server_begin is not None:
        start, source = s.server_begin, "#SERVER_BEGIN"
    elif s.name_time is not None:
        start, source = s.name_time, "file name"
    else:
        start, source = s.first_stamp, "first timestamp" if s.first_stamp else ""
    # Our writer states its clock; for anything else only the user knows the DUT's zone.
    zone = get_zone("UTC") if s.clock == "UTC" else dut_zone
    utc = to_utc(start, zone)
    try:
        rel = str(Path(s.path).relative_to(root))
    except ValueError:
        rel = s.path
    return {
        "path": rel,
        "benchmark": s.benchmark or "",
        "host": s.hostname or "",
        "ecc": s.ecc or "",
        "start_written": start.isoformat(sep=" ") if start else "",
        "start_source": source,
        "start_utc": utc.strftime("%Y-%m-%dT%H:%M:%SZ") if utc else "",
        "iterations": s.iterations,
        "acc_time_s": round(s.last_acc_time, 6) if s.last_acc_time is not None else "",
        "kernel_time_s": round(s.kernel_time, 6),
        "sdc": s.sdc_count,
        # Empty when the log has SDCs but no diehardnet detail lines: the split is unknown, not "all tolerable".
        "critical_sdc": "" if s.critical_sdc is None else s.critical_sdc,
        "tolerable_sdc": "" if s.tolerable_sdc is None else s.tolerable_sdc,
        "err_lines": s.err_lines,
        "aborted": s.aborted or "",
        "ended": s.ended,
        "due_reason": s.due_reason or s.server_end or "",
        "unparsed_lines": s.unparsed,
    }


def _work(args: tuple[str, str, tzinfo | None]) -> tuple[dict[str, object] | None, list[str]]:
    path, root, zone = args
    try:
        s = summarize(path, max_examples=3)
    except OSError as exc:  # one unreadable file must not stop the inventory of the others
        return None, [f"{path}: cannot read ({exc.strerror or exc}): left out"]
    notes = [f"{path}:{ln}: unparsed ({why}): {text}" for ln, why, text in s.unparsed_examples]
    if s.unparsed > len(s.unparsed_examples):
        notes.append(f"{path}: {s.unparsed - len(s.unparsed_examples)} more unparsed lines")
    return row_of(s, Path(root), zone), notes


def map_logs(fn: Callable[[T], R], items: Sequence[T], jobs: int = 0, pool_from: int = 16) -> list[R]:
    """``fn`` over ``items`` in order, in a pool of ``jobs`` processes (0: one per core) when there are at least
    ``pool_from`` items (fewer are read faster than a pool starts). Never more processes than items: a large
    --jobs must not fork hundreds of idle interpreters."""
    jobs = min(jobs or (os.cpu_count() or 1), len(items))
    if jobs > 1 and len(items) >= pool_from:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            return list(pool.map(fn, items, chunksize=max(1, len(items) // (jobs * 8))))
    return [fn(x) for x in items]


def inventory(root: Path, zone: tzinfo | None = None, jobs: int = 0) -> tuple[list[dict[str, object]], list[str]]:
    paths = find_logs(root)
    results = map_logs(_work, [(str(p), str(root), zone) for p in paths], jobs, pool_from=32)
    rows = [r for r, _ in results if r is not None]
    notes = [n for _, ns in results for n in ns]
    return rows, notes


def format_table(rows: list[dict[str, object]], columns: Sequence[str]) -> str:
    cells = [[str(r[c]) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    out = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    out += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(line.rstrip() for line in out)


SHOWN = [
    "path", "host", "ecc", "start_written", "iterations", "acc_time_s", "sdc", "critical_sdc",
    "tolerable_sdc", "err_lines", "aborted", "ended", "due_reason", "unparsed_lines",
]  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    p = make_parser("logs", "An inventory of a folder of libLogHelper logs, one row per file.")
    p.add_argument("folder", type=Path, help="folder of .log files (searched recursively), or one file")
    p.add_argument("--csv", type=Path, help="also write every column to this CSV file")
    p.add_argument("--dut-timezone", "--tz", dest="dut_timezone",
                   help="time zone of the DUT clocks for logs that do not state theirs (IANA name; as in 'diehard "
                   "fit --dut-timezone')")  # fmt: skip
    p.add_argument("--jobs", type=int, default=0, help="worker processes (default: one per core)")
    args = p.parse_args(argv)
    if args.jobs < 0:
        raise ConfigError(f"--jobs must be >= 0 (0: one per core), got {args.jobs}")

    zone = get_zone(args.dut_timezone, "--dut-timezone (--tz)") if args.dut_timezone else None
    t0 = time.perf_counter()
    rows, notes = inventory(args.folder, zone, args.jobs)
    elapsed = time.perf_counter() - t0
    for note in notes:
        print(note, file=sys.stderr)
    if not rows:
        print(f"no .log files under {args.folder}", file=sys.stderr)
        return 1
    print(format_table(rows, SHOWN))
    print(f"\n{len(rows)} logs, {sum(int(r['sdc']) for r in rows)} SDC records, "
          f"{sum(int(r['unparsed_lines']) for r in rows)} unparsed lines, read in {elapsed:.2f} s")  # fmt: skip
    if args.csv:

        def write(f) -> None:
            w = csv.DictWriter(f, fieldnames=COLUMNS)
            w.writeheader()
            w.writerows(rows)

        write_text_stream(args.csv, write, "--csv", newline="")
        print(f"wrote {args.csv}")
    return 0
