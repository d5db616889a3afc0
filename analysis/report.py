"""The campaign report (``diehard report``): a self-contained HTML file (plots embedded as PNG) or Markdown
(plots written beside it), from the outputs of ``diehard fit``, ``diehard pvf`` and ``diehard evaluate``.

Sections: FIT per error class with intervals, normalised cross sections (as Fig. 7 of the DieHardNet
paper), cumulative events against fluence, the truth comparison of a simulated campaign, PVF split into
critical and tolerable SDC (Fig. 6), regret bars from evaluate JSON files (Fig. 5), runs left out and why.
A report built on a simulated beam says so at the top and on every figure.
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd
from diehardlab.analysis import plots
from diehardlab.analysis.fit import FitResult
from diehardlab.analysis.nvbitfi import PvfResult
from diehardlab.analysis.truth import compare, load_truths

from diehardlab.cli import make_parser
from diehardlab.errors import DataError

MAX_RUN_ROWS = 200
EVAL_KEYS = ("clean_accuracy", "faulty_accuracy_mean", "regret_mean", "regret_std", "critical_rate", "tolerable_rate")


@dataclass
class FitData:
    groups: pd.DataFrame
    runs: pd.DataFrame
    events: pd.DataFrame
    truth: pd.DataFrame
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def simulated(self) -> bool:
        return bool(self.meta.get("simulated"))


def _read_csv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, keep_default_na=True) if path.is_file() else pd.DataFrame()


def load_fit(src: FitResult | FitData | str | Path) -> FitData:
    if isinstance(src, FitData):
        return src
    if isinstance(src, FitResult):
        return FitData(src.groups, src.runs, src.events, src.truth, dict(src.meta))
    d = Path(src)
    if not (d / "fit.csv").is_file():
        raise DataError(f"{d}: no fit.csv here; give the --out folder of 'diehard fit'")
    meta = json.loads((d / "meta.json").read_text()) if (d / "meta.json").is_file() else {}
    return FitData(_read_csv(d / "fit.csv"), _read_csv(d / "runs.csv"), _read_csv(d / "events.csv"),
                   _read_csv(d / "truth.csv"), meta)  # fmt: skip


def load_pvf(src: PvfResult | str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    if isinstance(src, PvfResult):
        return src.pvf, src.categories
    d = Path(src)
    if not (d / "pvf.csv").is_file():
        raise DataError(f"{d}: no pvf.csv here; give the --out folder of 'diehard pvf'")
    return _read_csv(d / "pvf.csv"), _read_csv(d / "categories.csv")


def _label(doc: dict, fallback: str) -> str:
    """A name for an evaluate result: its label/name, the model's name or checkpoint folder, else the file."""
    cfg = next((doc[k] for k in ("configuration", "config") if isinstance(doc.get(k), dict)), {})
    for key in ("label", "name"):
        if isinstance(doc.get(key), str):
            return doc[key]
    for key in ("label", "name", "model_name"):
        if isinstance(cfg.get(key), str) and cfg[key]:
            return cfg[key]
    if isinstance(cfg.get("checkpoint"), str) and cfg["checkpoint"]:
        return Path(cfg["checkpoint"]).name
    model = cfg.get("model") if isinstance(cfg.get("model"), dict) else {}
    if model:
        bits = [str(model.get(k)) for k in ("arch", "activation", "order") if model.get(k)]
        return f"{cfg.get('dataset', '')} {' '.join(bits)}".strip() or fallback
    return fallback


def load_evaluate(items: Sequence[str | Path | dict]) -> pd.DataFrame:
    rows = []
    for item in items:
        if isinstance(item, dict):
            doc, name = item, str(item.get("label", f"model {len(rows) + 1}"))
        else:
            p = Path(item)
            try:
                doc = json.loads(p.read_text())
            except (OSError, json.JSONDecodeError) as exc:
                raise DataError(f"{p}: not a readable evaluate JSON file: {exc}") from exc
            name = p.stem
        missing = [k for k in EVAL_KEYS if k not in doc]
        if missing:
            raise DataError(f"{name}: evaluate JSON lacks {', '.join(missing)} (write it with 'diehard evaluate')")
        rows.append({"label": _label(doc, name), **{k: float(doc[k]) for k in EVAL_KEYS}})
    return pd.DataFrame(rows)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return ""
        if math.isinf(v):
            return "inf"
        return f"{v:.4g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.3e}"
    return str(v)


def _table(df: pd.DataFrame, cols: Sequence[str], md: bool) -> str:
    cols = [c for c in cols if c in df.columns]
    if df.empty or not cols:
        return "_(none)_\n" if md else "<p><em>(none)</em></p>\n"
    cells = [[_fmt(v) for v in row] for row in df[cols].itertuples(index=False)]
    if md:
        out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        out += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in cells]
        return "\n".join(out) + "\n"
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in cells)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>\n"


class _Doc:
    def __init__(self, out: Path):
        self.out = out
        self.md = out.suffix.lower() == ".md"
        if not self.md and out.suffix.lower() not in (".html", ".htm"):
            raise DataError(f"{out}: the report is .html or .md")
        self.parts: list[str] = []
        self.images = 0

    def h(self, level: int, text: str) -> None:
        self.parts.append(f"{'#' * level} {text}\n" if self.md else f"<h{level}>{html.escape(text)}</h{level}>\n")

    def p(self, text: str, cls: str = "") -> None:
        if self.md:
            self.parts.append(f"{'**' + text + '**' if cls else text}\n")
        else:
            self.parts.append(f"<p{' class=' + repr(cls) if cls else ''}>{html.escape(text)}</p>\n")

    def ul(self, items: Sequence[str]) -> None:
        if self.md:
            self.parts.append("".join(f"- {i}\n" for i in items))
        else:
            self.parts.append("<ul>" + "".join(f"<li>{html.escape(i)}</li>" for i in items) + "</ul>\n")

    def table(self, df: pd.DataFrame, cols: Sequence[str]) -> None:
        self.parts.append(_table(df, cols, self.md))

    def image(self, png: bytes, alt: str) -> None:
        self.images += 1
        if self.md:
            folder = self.out.with_name(self.out.stem + "_files")
            folder.mkdir(parents=True, exist_ok=True)
            name = f"figure{self.images}.png"
            (folder / name).write_bytes(png)
            self.parts.append(f"![{alt}]({folder.name}/{name})\n")
        else:
            b64 = base64.b64encode(png).decode()
            self.parts.append(f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{b64}"/></figure>\n')

    def write(self, title: str) -> Path:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        if self.md:
            self.out.write_text(f"# {title}\n\n" + "\n".join(self.parts))
        else:
            style = ("body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse;"
                     "font-size:12px}td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}"
                     ".sim{background:#fee;color:#900;padding:8px;font-weight:bold}img{max-width:100%}")  # fmt: skip
            self.out.write_text(
                f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
                f"<style>{style}</style></head><body><h1>{html.escape(title)}</h1>\n"
                + "".join(self.parts)
                + "</body></html>\n"
            )
        return self.out


FIT_COLS = ["group", "error_class", "events", "fluence_n_cm2", "sigma_cm2", "sigma_lo_cm2", "sigma_hi_cm2", "fit",
            "fit_lo", "fit_hi", "norm", "norm_lo", "norm_hi", "norm_reference", "sigma_legacy_err_cm2"]  # fmt: skip
TRUTH_COLS = ["group", "error_class", "events", "truth_events", "true_sigma_cm2", "sigma_cm2", "sigma_lo_cm2",
              "sigma_hi_cm2", "contains_true", "ratio_measured_to_true"]  # fmt: skip


def build_report(
    out: str | Path,
    fit: FitResult | FitData | str | Path | None = None,
    pvf: PvfResult | str | Path | None = None,
    evaluate: Sequence[str | Path | dict] = (),
    truth: Sequence[str | Path] = (),
    title: str | None = None,
) -> Path:
    """Write the report to ``out`` (.html: self-contained; .md: figures in ``<stem>_files/``)."""
    doc = _Doc(Path(out))
    data = load_fit(fit) if fit is not None else None
    simulated = bool(data and data.simulated) or bool(truth)
    name = data.meta.get("campaign", "") if data else ""
    title = title or f"diehardlab report{': ' + name if name else ''}"
    if simulated:
        doc.p("SIMULATED BEAM: these results come from the beam simulator, not from a facility.", "sim")
    doc.p(f"Generated {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC by diehardlab "
          f"{(data.meta.get('versions') or {}).get('diehardlab', '') if data else ''}.")  # fmt: skip
    if data is not None:
        _fit_sections(doc, data, simulated, truth)
    if pvf is not None:
        pv, cats = load_pvf(pvf)
        doc.h(2, "NVBitFI: program vulnerability factor")
        if len(pv):
            doc.p(f"PVF = outcome count / injections made, per (app, instruction group, bit-flip model); "
                  f"intervals: {pv['ci_method'].iloc[0]}.")  # fmt: skip
            doc.image(plots.pvf_plot(pv), "PVF split into critical and tolerable SDC")
        doc.table(pv, ["app", "group", "model", "outcome", "count", "injections", "pvf", "pvf_lo", "pvf_hi"])
        doc.h(3, "Outcome categories (all 19)")
        doc.table(cats, ["app", "group", "model", "category", "category_name", "outcome", "count"])
    if evaluate:
        ev = load_evaluate(evaluate)
        doc.h(2, "Application-level fault injection: regret")
        doc.p("Regret = clean accuracy - accuracy under injected faults (mean and standard deviation over trials).")
        doc.image(plots.regret_plot(ev), "regret per model configuration")
        doc.table(ev, ["label", *EVAL_KEYS])
    return doc.write(title)


def _fit_sections(doc: _Doc, data: FitData, simulated: bool, truth: Sequence[str | Path]) -> None:
    g = data.groups
    meta = data.meta
    doc.h(2, "Cross sections and FIT")
    doc.ul([
        f"fluence: {meta.get('fluence_method', g['fluence_method'].iloc[0] if len(g) else '')} "
        "(integrated = flux integrated over each run's window, beam-off excluded; mean-flux-x-acc-time = the "
        "reference parsers' mean flux x accumulated kernel time)",
        f"intervals: {g['ci_method'].iloc[0] if len(g) else ''} (Garwood, exact Poisson; zero-event groups show "
        "their upper limit)",
        "FIT = sigma x 13 n/(cm^2 h) x 1e9 (JESD89A sea level)",
    ])  # fmt: skip
    if len(g):
        classes = [c for c in ("sdc", "sdc_critical", "sdc_tolerable", "due") if c in set(g["error_class"])]
        doc.image(plots.fit_plot(g, simulated, classes), "FIT per error class")
        if "norm" in g and g["norm"].notna().any():
            ref = ", ".join(sorted(set(g["norm_reference"].dropna().astype(str)) - {""}))
            doc.h(3, f"Normalised cross sections (reference: {ref})")
            doc.image(plots.normalised_plot(g, simulated, classes), "normalised cross sections")
    doc.table(g, FIT_COLS)
    if len(data.events):
        doc.h(3, "Cumulative events against fluence")
        doc.image(plots.cumulative_plot(data.events, simulated), "cumulative events")
    t = data.truth
    if truth:
        t = compare(data.runs, g, load_truths([Path(x) for x in truth]))
    if t is not None and len(t):
        doc.h(2, "Truth comparison (simulated beam)")
        hits = int(t["contains_true"].astype(bool).sum())
        doc.p(f"The measured interval contains the simulator's true cross section in {hits} of {len(t)} rows.")
        doc.table(t, TRUTH_COLS)
    r = data.runs
    if len(r):
        doc.h(2, "Runs")
        ex = r[r["excluded"].astype(bool)]
        used = r[~r["excluded"].astype(bool)]
        doc.p(f"{len(r)} runs, {len(ex)} excluded; beam-off time inside the counted runs: "
              f"{used['beam_off_s'].sum():.0f} s of {used['wall_s'].sum():.0f} s.")  # fmt: skip
        if len(r) > MAX_RUN_ROWS:  # the excluded ones first: they are what needs attention
            r = pd.concat([ex, used]).head(MAX_RUN_ROWS)
            doc.p(f"Showing {MAX_RUN_ROWS} of {len(data.runs)} runs (all of them are in runs.csv).")
        doc.table(r, ["name", "group", "start_utc", "end_source", "wall_s", "kernel_time_s", "sdc", "due_class",
                      "fluence_n_cm2", "beam_off_s", "excluded", "exclude_reason"])  # fmt: skip
    notes = meta.get("notes") or []
    if notes:
        doc.h(3, "Notes (malformed lines, exclusions)")
        doc.ul(notes[:50] + ([f"... {len(notes) - 50} more in meta.json"] if len(notes) > 50 else []))


def main(argv: Sequence[str] | None = None) -> int:
    p = make_parser("report", "A self-contained HTML (or Markdown) report of a campaign.")
    p.add_argument("--fit", type=Path, help="output folder of 'diehard fit'")
    p.add_argument("--pvf", type=Path, help="output folder of 'diehard pvf'")
    p.add_argument("--evaluate", type=Path, nargs="+", action="extend", default=[],
                   help="JSON files of 'diehard evaluate' (repeatable)")  # fmt: skip
    p.add_argument("--truth", type=Path, nargs="+", action="extend", default=[],
                   help="beam-simulator truth files or folders (repeatable)")  # fmt: skip
    p.add_argument("--title")
    p.add_argument("--out", type=Path, required=True, help="report file: .html or .md")
    args = p.parse_args(argv)
    if args.fit is None and args.pvf is None and not args.evaluate:
        p.error("give at least one of --fit, --pvf, --evaluate")
    path = build_report(args.out, fit=args.fit, pvf=args.pvf, evaluate=args.evaluate, truth=args.truth,
                        title=args.title)  # fmt: skip
    print(f"wrote {path}")
    return 0
