"""NVBitFI campaign results (FORMATS.md section 5) and PVF with binomial intervals (``diehard pvf``).

A campaign folder ``logs/<app>/`` holds one results file per (mode, instruction group, bit-flip model),
``results-mode<m>-igid<g>.bfm<b>.<N>.txt``, one line per injection::

    icount;kname;kcount;iid;opid;bid:pc:opcode:tid:mask:runtime_s:cat:dmesg:value_before0x..:value_after0x..

The dmesg text may hold ``;`` and ``:``, so the head is split a bounded number of times and the tail is
read with a pattern. Every one of the 19 outcome categories is counted (upstream's summary drops 19) and
mapped to Masked / SDC / DUE / potential DUE by a mapping the user can change. Injections whose folder
says ``Error not injected`` are not counted as made. Critical vs tolerable SDC comes from the DUT log an
injection wrote (its path is printed in its ``stdout.txt``).
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from diehardlab.analysis import intervals

from diehardlab.cli import make_parser
from diehardlab.errors import ConfigError, DataError
from diehardlab.formats.parser import summarize
from diehardlab.outfiles import replace_folder

CATEGORIES = {
    1: "masked: value not read", 2: "masked: value overwritten", 3: "masked: other",
    4: "DUE: timeout", 5: "DUE: non-zero exit code",
    6: "potential DUE: kernel error, output same", 7: "potential DUE: kernel error, output differs",
    8: "potential DUE: stderr differs", 9: "potential DUE: error message in stdout",
    10: "potential DUE: stderr only differs", 11: "potential DUE: dmesg, stderr differs",
    12: "potential DUE: dmesg, stdout differs", 13: "potential DUE: dmesg, output differs",
    14: "potential DUE: dmesg, app check failed", 15: "potential DUE: Xid in dmesg",
    16: "SDC: stdout differs", 17: "SDC: output file differs", 18: "SDC: app-specific check failed",
    19: "uncategorized: stdout and stderr differ (usually a crash)",
}  # fmt: skip
OUTCOMES = ("masked", "sdc", "due", "potential_due")
DEFAULT_MAP = {c: "masked" for c in (1, 2, 3)} | {4: "due", 5: "due", 19: "due"}
DEFAULT_MAP |= {c: "potential_due" for c in range(6, 16)} | {c: "sdc" for c in (16, 17, 18)}
GROUPS = {0: "FP64", 1: "FP32", 2: "LD", 3: "PR", 4: "NODEST", 5: "OTHERS", 6: "GPPR", 7: "GP"}
MODELS = {0: "FLIP_SINGLE_BIT", 1: "FLIP_TWO_BITS", 2: "RANDOM_VALUE", 3: "ZERO_VALUE"}

_RESULTS = re.compile(r"^results-mode(?P<mode>[^-]*)-igid(?P<igid>\d+)\.bfm(?P<bfm>\d+)\.(?P<n>\d+)\.txt$")
_TAIL = re.compile(
    r"^(?P<bid>[^:]*):(?P<pc>[^:]*):(?P<opcode>[^:]*):(?P<tid>[^:]*):(?P<mask>[^:]*):(?P<runtime>[^:]*):"
    r"(?P<cat>\d+)(?::(?P<dmesg>.*?))?(?::value_before(?P<before>[^:]*):value_after(?P<after>.*))?$"
)
_LOG_PATH = re.compile(r"(\S+\.log)\b")


@dataclass
class PvfResult:
    injections: pd.DataFrame
    categories: pd.DataFrame
    pvf: pd.DataFrame
    notes: list[str] = field(default_factory=list)
    meta: dict = field(default_factory=dict)


def parse_mapping(items: Sequence[str]) -> dict[int, str]:
    """``CAT=OUTCOME`` overrides of the default category mapping (e.g. ``19=potential_due``)."""
    mapping = dict(DEFAULT_MAP)
    for item in items:
        cat, _, outcome = item.partition("=")
        outcome = outcome.strip().replace("-", "_").lower()
        if not cat.strip().isdigit() or int(cat) not in CATEGORIES or outcome not in OUTCOMES:
            raise ConfigError(f"--map {item!r}: use CATEGORY=OUTCOME with CATEGORY 1-19, OUTCOME one of {OUTCOMES}")
        mapping[int(cat)] = outcome
    return mapping


def read_results(path: Path, notes: list[str]) -> list[dict]:
    m = _RESULTS.match(path.name)
    if not m:
        raise DataError(f"{path}: not an NVBitFI results file name (results-mode<m>-igid<g>.bfm<b>.<N>.txt)")
    app = path.parent.name
    igid, bfm = int(m["igid"]), int(m["bfm"])
    rows = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            head = line.split(";", 5)
            t = _TAIL.match(head[5]) if len(head) == 6 else None
            if t is None or not head[0].strip().isdigit():
                notes.append(f"{path}:{lineno}: malformed NVBitFI result line skipped: {line[:80]!r}")
                continue
            cat = int(t["cat"])
            if cat not in CATEGORIES:
                notes.append(f"{path}:{lineno}: unknown outcome category {cat}; skipped")
                continue
            rows.append({
                "app": app, "mode": m["mode"], "igid": igid, "group": GROUPS.get(igid, f"igid{igid}"), "bfm": bfm,
                "model": MODELS.get(bfm, f"bfm{bfm}"), "icount": int(head[0]), "kname": head[1], "kcount": head[2],
                "iid": head[3], "opid": head[4], "opcode": t["opcode"], "mask": t["mask"], "runtime_s": t["runtime"],
                "category": cat, "dmesg": t["dmesg"] or "", "value_before": t["before"] or "",
                "value_after": t["after"] or "",
                "file": str(path), "line": lineno,
            })  # fmt: skip
    return rows


def _injection_dir(results: Path, app: str, igid: int, bfm: int, icount: int) -> Path:
    return results.parent / f"{app}-group{igid}-model{bfm}-icount{icount}"


def _not_injected(folder: Path) -> bool:
    p = folder / "nvbitfi-injection-log-temp.txt"
    try:
        return "Error not injected" in p.read_text(errors="replace")
    except OSError:
        return False


def _dut_log_of(folder: Path, dut_logs: Path | None) -> Path | None:
    try:
        text = (folder / "stdout.txt").read_text(errors="replace")
    except OSError:
        return None
    for m in _LOG_PATH.finditer(text):
        p = Path(m.group(1))
        for cand in ([dut_logs / p.name] if dut_logs else []) + [p, folder / p.name]:
            if cand.is_file():
                return cand
    return None


def pvf(
    root: Path | str,
    dut_logs: Path | str | None = None,
    mapping: dict[int, str] | None = None,
    method: str = "clopper-pearson",
    confidence: float = 0.95,
) -> PvfResult:
    root = Path(root)
    mapping = mapping or dict(DEFAULT_MAP)
    files = [root] if root.is_file() else sorted(root.rglob("results-mode*-igid*.bfm*.txt"))
    if not files:
        raise DataError(f"{root}: no NVBitFI results files (results-mode<m>-igid<g>.bfm<b>.<N>.txt) under it")
    notes: list[str] = []
    rows = []
    for f in files:
        if not f.is_file():
            raise DataError(f"{f}: not a file; give the NVBitFI logs folder or one results file")
        for r in read_results(f, notes):
            folder = _injection_dir(f, r["app"], r["igid"], r["bfm"], r["icount"])
            r["injected"] = not _not_injected(folder)
            r["outcome"] = mapping[r["category"]]
            r["sdc_severity"] = ""
            if r["outcome"] == "sdc":
                log = _dut_log_of(folder, Path(dut_logs) if dut_logs else None)
                if log is not None:
                    s = summarize(log)
                    # A log without diehardnet detail lines cannot say critical or tolerable: unjoined, not tolerable.
                    crit = s.critical_sdc
                    r["sdc_severity"] = (
                        "" if crit is None else ("critical" if crit else ("tolerable" if s.sdc_count else ""))
                    )
                    r["dut_log"] = str(log)
            rows.append(r)
    if not rows:
        shown = "; ".join(notes[:2])
        raise DataError(
            f"{root}: no readable NVBitFI result line in {len(files)} results file(s)"
            f"{': ' + shown if shown else ''}; are these NVBitFI results (icount;kname;kcount;iid;opid;bid:pc:...)?"
        )
    inj = pd.DataFrame(rows)
    made = inj[inj["injected"]]
    if made.empty:
        raise DataError(
            f"{root}: none of the {len(inj)} injections was made (every injection folder's "
            "nvbitfi-injection-log-temp.txt says 'Error not injected'): there is no PVF to compute; check the "
            "NVBitFI campaign (instruction group and kernel names)"
        )
    keys = ["app", "group", "model", "igid", "bfm"]
    cats = made.groupby([*keys, "category"]).size().rename("count").reset_index()
    cats["category_name"] = cats["category"].map(CATEGORIES)
    cats["outcome"] = cats["category"].map(mapping)
    out = []
    for k, sub in made.groupby(keys):
        n = len(sub)
        counts = {o: int((sub["outcome"] == o).sum()) for o in OUTCOMES}
        joined = sub[sub["outcome"] == "sdc"]
        if (joined["sdc_severity"] != "").any():
            counts["sdc_critical"] = int((joined["sdc_severity"] == "critical").sum())
            counts["sdc_tolerable"] = int((joined["sdc_severity"] == "tolerable").sum())
            counts["sdc_unjoined"] = int((joined["sdc_severity"] == "").sum())
        for outcome, c in counts.items():
            lo, hi = intervals.binomial_interval(c, n, confidence, method)
            out.append({**dict(zip(keys, k)), "outcome": outcome, "count": c, "injections": n, "pvf": c / n,
                        "pvf_lo": lo, "pvf_hi": hi, "ci_method": f"{method} {confidence:.4g}"})  # fmt: skip
    skipped = int((~inj["injected"]).sum())
    if skipped:
        notes.append(f"{skipped} injections were not made ('Error not injected'): left out of the PVF denominators")
    meta = {"root": str(root), "files": [str(f) for f in files], "mapping": mapping, "method": method,
            "confidence": confidence, "injections": len(inj), "not_injected": skipped}  # fmt: skip
    return PvfResult(inj, cats, pd.DataFrame(out), notes, meta)


PVF_OUTPUTS = ("pvf.csv", "categories.csv", "injections.csv", "meta.json")


def write_pvf(result: PvfResult, out_dir: Path | str) -> list[Path]:
    """pvf.csv, categories.csv, injections.csv and meta.json, replacing the folder's outputs as a set."""

    def write(folder: Path) -> list[str]:
        for name, df in (("pvf", result.pvf), ("categories", result.categories), ("injections", result.injections)):
            df.to_csv(folder / f"{name}.csv", index=False)
        (folder / "meta.json").write_text(json.dumps(result.meta | {"notes": result.notes}, indent=2) + "\n")
        return list(PVF_OUTPUTS)

    return replace_folder(Path(out_dir), write, "diehard pvf", lambda name: name in PVF_OUTPUTS)


def main(argv: Sequence[str] | None = None) -> int:
    p = make_parser("pvf", "PVF per (app, instruction group, bit-flip model) from NVBitFI results.")
    p.add_argument("nvbitfi_logs", type=Path, help="NVBitFI logs folder (logs/<app>/results-mode*.txt), or one file")
    p.add_argument("--dut-logs", type=Path, help="folder of the DUT logs the injections wrote (critical/tolerable)")
    p.add_argument("--out", type=Path, default=Path("pvf-results"))
    p.add_argument("--method", choices=("clopper-pearson", "wilson"), default="clopper-pearson")
    p.add_argument("--confidence", type=float, default=0.95)
    p.add_argument("--map", action="append", default=[], metavar="CAT=OUTCOME",
                   help="change the category mapping, e.g. 19=potential_due (repeatable)")  # fmt: skip
    args = p.parse_args(argv)
    if not 0 < args.confidence < 1:
        raise ConfigError(f"--confidence must be in (0, 1), got {args.confidence}")
    res = pvf(args.nvbitfi_logs, args.dut_logs, parse_mapping(args.map), args.method, args.confidence)
    for n in res.notes:
        print(n, file=sys.stderr)
    show = res.pvf[["app", "group", "model", "outcome", "count", "injections", "pvf", "pvf_lo", "pvf_hi"]]
    print(show.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    for path in write_pvf(res, args.out):
        print(f"wrote {path}")
    return 0
