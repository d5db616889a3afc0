"""Reading one large log: streamed in blocks (what ``summarize`` and ``diehard logs`` do) against reading it whole.

Writes a libLogHelper log of --mb MB (#IT progress with an #ERR and an #SDC every 1000 lines), then, each in its
own process so the peak RSS is its own, --repeat times alternating:
  whole      Path.read_bytes().decode("utf-8", "replace").split("\\n"), then summarize's fold over the lines
             (how the parser read a log before it streamed)
  streamed   diehardlab.formats.parser.summarize (line_blocks: 1 MiB blocks, an incremental UTF-8 decoder)
and prints the median CPU seconds, MB/s and peak RSS of each, and their ratios.

    MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=4294967296 \\
    python tests/bench/bench_analysis_stream.py --mb 200 --repeat 3
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import resource, sys, time
from pathlib import Path
from diehardlab.formats import parser
path, how = sys.argv[1], sys.argv[2]
t = time.process_time()
if how == "whole":
    def whole(p, chunk=0):  # the pre-streaming reader: the file, then its text, then its lines, all in memory
        lines = Path(p).read_bytes().decode("utf-8", "replace").split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        yield lines
    parser.line_blocks = whole
s = parser.summarize(path)
cpu = time.process_time() - t
print(cpu, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, s.sdc_count, s.lines)
"""


def make_log(path: Path, mb: float) -> None:
    block = "".join(f"#IT {i} KerTime:0.0962310 AccTime:{i * 0.096231:.7f}\n" for i in range(1000))
    block += "#ERR batch:0 img:3 i:7 g:1.250000e-01 o:1.500000e-01\n"
    block += "#SDC Ite:999 KerTime:0.0962310 AccTime:96.2310000 KerErr:1 AccErr:1\n"
    with open(path, "w") as f:
        f.write("#HEADER bench\n#BEGIN Y:2026 M:1 D:1 Time:00:00:00\n")
        for _ in range(max(1, int(mb * 1e6 // len(block)))):
            f.write(block)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mb", type=float, default=200.0)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        log = Path(d) / "2026_01_01_00_00_00_bench_ECC_ON_host.log"
        make_log(log, a.mb)
        mb = log.stat().st_size / 1e6
        res: dict[str, list[tuple[float, float]]] = {"whole": [], "streamed": []}
        out = {}
        for _ in range(a.repeat):
            for how in res:
                r = subprocess.run([sys.executable, "-c", CHILD, str(log), how], capture_output=True, text=True,
                                   check=True)  # fmt: skip
                cpu, rss, sdc, lines = r.stdout.split()
                res[how].append((float(cpu), float(rss)))
                out[how] = (sdc, lines)
        assert out["whole"] == out["streamed"], out
        print(f"log: {mb:.1f} MB, {out['whole'][1]} lines, {out['whole'][0]} SDC (both readers agree)")
        med = {how: (statistics.median(c for c, _ in v), statistics.median(m for _, m in v)) for how, v in res.items()}
        for how, (cpu, rss) in med.items():
            print(f"{how:<9} {cpu:7.2f} s CPU  {mb / cpu:6.1f} MB/s  peak RSS {rss:7.1f} MB")
        print(f"CPU ratio whole/streamed: {med['whole'][0] / med['streamed'][0]:.2f}x")
        print(f"peak RSS ratio whole/streamed: {med['whole'][1] / med['streamed'][1]:.2f}x")


if __name__ == "__main__":
    main()
