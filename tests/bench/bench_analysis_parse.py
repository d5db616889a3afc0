"""Parsing throughput of the analysis on a large folder of logs, against a reference-style parser.

Builds a folder of ~200 MB by replicating the real beam-log samples, then, in one run, times:
  reference   one regex per marker tried in turn on every line (tests/bench/reference_parser.py), 1 process
  records     every record of diehardlab.formats.parser.parse_file folded into a summary (the record path), 1 process
  summarize   diehardlab.formats.parser.summarize (what `diehard fit` and the inventory use), 1 process
  summarize-jN the same through diehardlab.analysis.runs.scan_all with N worker processes
and prints MB/s, medians over --repeat runs, and the ratios to the reference.

    PYTHONPATH=. python tests/bench/bench_analysis_parse.py --mb 200 --jobs 2
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from diehardlab.analysis.runs import scan_all  # noqa: E402
from reference_parser import reference_summary  # noqa: E402

from diehardlab.formats.parser import LogSummary, _fold, parse_file, summarize  # noqa: E402


def build_folder(dest: Path, mb: float) -> list[Path]:
    samples = sorted((ROOT / "tests" / "data" / "beam-logs").glob("*.log"))
    size = sum(p.stat().st_size for p in samples)
    copies = max(1, round(mb * 1e6 / size))
    out = []
    for i in range(copies):
        for p in samples:
            q = dest / f"c{i:04d}" / p.name
            q.parent.mkdir(exist_ok=True)
            shutil.copyfile(p, q)
            out.append(q)
    return out


def folded(path: Path) -> LogSummary:
    s = LogSummary(path=str(path))
    for rec in parse_file(path):
        _fold(s, rec, 20)
    return s


def timed(fn, paths) -> float:
    t0 = time.perf_counter()
    fn(paths)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mb", type=float, default=200.0)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-analysis-") as tmp:
        paths = build_folder(Path(tmp), args.mb)
        mb = sum(p.stat().st_size for p in paths) / 1e6
        print(f"folder: {len(paths)} logs, {mb:.1f} MB (the 8 real samples replicated)")
        # same answers first: the fast summary must agree with the record path
        for p in paths[:8]:
            a, b = folded(p), summarize(p)
            assert (a.sdc_count, a.critical_sdc, a.it_lines) == (b.sdc_count, b.critical_sdc, b.it_lines)
        contenders = {
            "reference": lambda ps: [reference_summary(str(p)) for p in ps],
            "records": lambda ps: [folded(p) for p in ps],
            "summarize": lambda ps: [summarize(p) for p in ps],
            f"summarize-j{args.jobs}": lambda ps: scan_all(ps, args.jobs),
        }
        times: dict[str, float] = {}
        for name, fn in contenders.items():
            times[name] = statistics.median(timed(fn, paths) for _ in range(args.repeat))
            print(f"{name:<14} {times[name]:8.2f} s  {mb / times[name]:7.1f} MB/s", flush=True)
        ref = times["reference"]
        for name, t in times.items():
            if name != "reference":
                print(f"ratio reference/{name}: {ref / t:.2f}x")


if __name__ == "__main__":
    main()
