"""Compare two raw float32 output files (``diehard run --once --output``) with a tolerance; standard library only.

Used by the generated NVBitFI ``sdc_check.sh`` to write ``diff.log``: empty when every element is within the
threshold of the golden one, else one line per differing element (at most ``--max-lines``) and a count.
``python -m diehardlab.harness.outdiff OUTPUT GOLDEN --threshold T``; always exits 0 (NVBitFI reads the file,
not the status).
"""

from __future__ import annotations

import argparse
import math
import sys
from array import array
from pathlib import Path


def read_floats(path: Path) -> array | None:
    try:
        data = path.read_bytes()
    except OSError:
        return None
    if len(data) % 4:
        return None
    values = array("f")
    values.frombytes(data)
    if sys.byteorder != "little":
        values.byteswap()
    return values


def diff_lines(output: Path, golden: Path, threshold: float, max_lines: int = 100) -> list[str]:
    out, gold = read_floats(output), read_floats(golden)
    if gold is None:
        return [f"golden output {golden} is missing or not float32"]
    if out is None:
        return [f"output {output} is missing or not float32"]
    if len(out) != len(gold):
        return [f"output has {len(out)} values, golden {len(gold)}"]
    lines, count = [], 0
    for i, (o, g) in enumerate(zip(out, gold)):
        # Written as "not <=" so NaN and Inf count as differences.
        if not abs(o - g) <= threshold or not math.isfinite(o):
            count += 1
            if len(lines) < max_lines:
                lines.append(f"element {i}: golden {g:.6e} output {o:.6e}")
    if count:
        lines.append(f"{count} of {len(out)} elements differ by more than {threshold:g}")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m diehardlab.harness.outdiff", description=__doc__.splitlines()[0])
    p.add_argument("output")
    p.add_argument("golden")
    p.add_argument("--threshold", type=float, default=1e-3)
    p.add_argument("--max-lines", type=int, default=100)
    a = p.parse_args(argv)
    for line in diff_lines(Path(a.output), Path(a.golden), a.threshold, a.max_lines):
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
