"""Truth files of the beam simulator (``<log file>.truth.json``) and the comparison with what was measured.

A simulated run knows the cross sections it was given; the analysis must recover them. For each group
the true cross section is the fluence-weighted mean of its runs' truths (equal when the runs share one
spec), and the table says whether the measured interval contains it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from diehardlab.analysis.inventory import find_files

from diehardlab.errors import DataError

# fit's error class -> the truth file's key. The critical/tolerable split is in the truth files of beams that strike
# inside the network (the simulator measures each model's share); output corruption has none, and is skipped.
TRUE_CLASSES = {
    "sdc": "sdc",
    "sdc_critical": "sdc_critical",
    "sdc_tolerable": "sdc_tolerable",
    "due": "due",
    "due_crash": "crash",
    "due_hang": "hang",
}


def find_truth_files(paths: Sequence[Path]) -> list[Path]:
    return find_files(paths, "*.truth.json", "give the beam simulator's .truth.json files or their folder")


def load_truths(paths: Sequence[Path]) -> dict[str, dict]:
    """Truth documents by the log file name they describe."""
    out: dict[str, dict] = {}
    for p in find_truth_files(paths):
        try:
            doc = json.loads(Path(p).read_bytes().decode("utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)[:100]
            raise DataError(f"{p}: not a readable truth file ({why})") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("true_sigma_cm2"), dict):
            raise DataError(f"{p}: no 'true_sigma_cm2' in this truth file (is it a beam-simulator truth file?)")
        name = doc.get("log_file") or Path(p).name.removesuffix(".truth.json")
        out[Path(name).name] = doc
    return out


def _observed_as(event: dict, cls: str) -> bool:
    observed, kind = event.get("observed"), event.get("kind")
    if cls == "sdc":
        return observed == "sdc"
    if cls in ("sdc_critical", "sdc_tolerable"):
        return observed == "sdc" and bool(event.get("critical")) == (cls == "sdc_critical")
    if cls == "due":
        return observed == "due" and kind in ("crash", "hang")
    return observed == "due" and kind == TRUE_CLASSES[cls]


def compare(runs: pd.DataFrame, groups: pd.DataFrame, truths: dict[str, dict]) -> pd.DataFrame:
    """One row per (group, error class) that has a true value: true sigma, measured interval, contained."""
    if not truths or runs.empty:
        return pd.DataFrame()
    used = runs[~runs["excluded"].astype(bool)]
    rows = []
    for label, sub in used.groupby("group"):
        for cls, key in TRUE_CLASSES.items():
            num = den = 0.0
            seen = 0  # events the simulator says the runner observed in this class
            for _, r in sub.iterrows():
                doc = truths.get(r["name"])
                if doc is None:
                    continue
                seen += sum(1 for e in doc.get("events", []) if _observed_as(e, cls))
                true = doc["true_sigma_cm2"].get(key)
                if key == "due" and true is None:
                    parts = [doc["true_sigma_cm2"].get(k) for k in ("crash", "hang")]
                    true = sum(x for x in parts if x is not None) if any(x is not None for x in parts) else None
                if true is None:
                    continue
                w = float(r["fluence_n_cm2"]) if float(r["fluence_n_cm2"]) > 0 else 1.0
                num += float(true) * w
                den += w
            if den == 0:
                continue
            m = groups[(groups["group"] == label) & (groups["error_class"] == cls)]
            if m.empty:
                continue
            g = m.iloc[0]
            true = num / den
            lo, hi = float(g["sigma_lo_cm2"]), float(g["sigma_hi_cm2"])
            rows.append(
                {
                    "group": label,
                    "error_class": cls,
                    "events": int(g["events"]),
                    "truth_events": seen,
                    "fluence_n_cm2": float(g["fluence_n_cm2"]),
                    "true_sigma_cm2": true,
                    "sigma_cm2": float(g["sigma_cm2"]),
                    "sigma_lo_cm2": lo,
                    "sigma_hi_cm2": hi,
                    "contains_true": bool(lo <= true <= hi) if not math.isnan(lo) else False,
                    "ratio_measured_to_true": float(g["sigma_cm2"]) / true if true > 0 else math.nan,
                    "ci_method": g["ci_method"],
                }
            )
    return pd.DataFrame(rows)
