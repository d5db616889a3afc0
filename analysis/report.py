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
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd
from diehardlab.analysis.fit import FitResult
from diehardlab.analysis.nvbitfi import PvfResult
from diehardlab.analysis.truth import compare, load_truths

from diehardlab.cli import make_parser
from diehardlab.errors import DataError
from diehardlab.outfiles import new_folder_beside, swap_in, write_text_stream

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


# The columns each table of 'diehard fit' and 'diehard pvf' must have for the report to read it.
NEEDED = {
    "fit.csv": ("group", "error_class", "events", "fluence_n_cm2", "sigma_cm2", "sigma_lo_cm2", "sigma_hi_cm2", "fit",
                "fit_lo", "fit_hi", "ci_method"),
    "runs.csv": ("name", "group", "excluded", "exclude_reason", "wall_s", "beam_off_s"),
    "events.csv": ("group", "error_class", "cum_fluence_n_cm2"),
    "truth.csv": ("group", "error_class", "true_sigma_cm2", "contains_true"),
    "pvf.csv": ("app", "group", "model", "outcome", "count", "injections", "pvf", "pvf_lo", "pvf_hi", "ci_method"),
    "categories.csv": ("app", "group", "model", "category", "category_name", "outcome", "count"),
}  # fmt: skip


def _read_csv(path: Path, required: bool = False, producer: str = "diehard fit") -> pd.DataFrame:
    """A table written by 'diehard fit' or 'diehard pvf'; anything else (empty, binary, another tool's CSV) is a
    DataError naming the file."""
    if not path.is_file():
        if required:
            raise DataError(f"{path}: not found; give the --out folder of '{producer}'")
        return pd.DataFrame()
    hint = f"is this the output of '{producer}'? Run it again into this folder"
    try:
        df = pd.read_csv(path, keep_default_na=True)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: empty file; {hint}") from None
    except (UnicodeDecodeError, pd.errors.ParserError, ValueError, OSError) as exc:
        raise DataError(f"{path}: not a readable CSV table ({str(exc).splitlines()[0][:100]}); {hint}") from None
    missing = [c for c in NEEDED.get(path.name, ()) if c not in df.columns]
    if missing and not (df.empty and len(df.columns) == 0):
        raise DataError(f"{path}: lacks the column(s) {', '.join(missing[:6])}; {hint}")
    return df


def _read_meta(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        doc = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, OSError) as exc:
        raise DataError(f"{path}: not a readable meta.json ({str(exc)[:100]}); run 'diehard fit' again") from None
    if not isinstance(doc, dict):
        raise DataError(f"{path}: not a meta.json of 'diehard fit' (a JSON object is expected)")
    return doc


def load_fit(src: FitResult | FitData | str | Path) -> FitData:
    if isinstance(src, FitData):
        return src
    if isinstance(src, FitResult):
        return FitData(src.groups, src.runs, src.events, src.truth, dict(src.meta))
    d = Path(src)
    if not (d / "fit.csv").is_file():
        raise DataError(f"{d}: no fit.csv here; give the --out folder of 'diehard fit'")
    meta = _read_meta(d / "meta.json")
    return FitData(_read_csv(d / "fit.csv", True), _read_csv(d / "runs.csv"), _read_csv(d / "events.csv"),
                   _read_csv(d / "truth.csv"), meta)  # fmt: skip


def load_pvf(src: PvfResult | str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    if isinstance(src, PvfResult):
        return src.pvf, src.categories
    d = Path(src)
    if not (d / "pvf.csv").is_file():
        raise DataError(f"{d}: no pvf.csv here; give the --out folder of 'diehard pvf'")
    return _read_csv(d / "pvf.csv", True, "diehard pvf"), _read_csv(d / "categories.csv", False, "diehard pvf")


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
                doc = json.loads(p.read_bytes().decode("utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
                why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)[:100]
                raise DataError(f"{p}: not a readable evaluate JSON file ({why})") from None
            name = str(p)
        if not isinstance(doc, dict):
            raise DataError(f"{name}: not an evaluate JSON file (a JSON object is expected; write it with 'diehard "
                            "evaluate')")  # fmt: skip
        missing = [k for k in EVAL_KEYS if k not in doc]
        if missing:
            raise DataError(f"{name}: evaluate JSON lacks {', '.join(missing)} (write it with 'diehard evaluate')")
        try:
            vals = {k: float(doc[k]) for k in EVAL_KEYS}
        except (TypeError, ValueError):
            raise DataError(f"{name}: evaluate JSON fields {', '.join(EVAL_KEYS)} must be numbers") from None
        rows.append({"label": _label(doc, Path(name).stem), **vals})
    return pd.DataFrame(rows)


def _plots():
    """The figures module, imported when the first figure is drawn (matplotlib takes a while to import)."""
    from diehardlab.analysis import plots

    return plots


def _fmt(v: Any) -> str:
    if v is None or v is pd.NA:
        return ""
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
        self.figures: dict[str, bytes] = {}

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
            name = f"figure{self.images}.png"
            self.figures[name] = png
            self.parts.append(f"![{alt}]({self.out.stem}_files/{name})\n")
        else:
            b64 = base64.b64encode(png).decode()
            self.parts.append(f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{b64}"/></figure>\n')

    def render(self, title: str) -> str:
        if self.md:
            return f"# {title}\n\n" + "\n".join(self.parts)
        style = ("body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse;"
                 "font-size:12px}td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}"
                 ".sim{background:#fee;color:#900;padding:8px;font-weight:bold}img{max-width:100%}")  # fmt: skip
        return (
            f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body><h1>{html.escape(title)}</h1>\n"
            + "".join(self.parts)
            + "</body></html>\n"
        )

    def write(self, title: str) -> Path:
        """Write then rename: the report file (and a Markdown report's figure folder, as a whole) appears
        complete or not at all; a full or read-only disk is one clear error and the old report stays."""
        text = self.render(title)
        figs = self.out.with_name(self.out.stem + "_files")
        new = None
        if self.md and self.figures:
            try:
                new = new_folder_beside(figs)
                for name, png in self.figures.items():
                    (new / name).write_bytes(png)
            except OSError as exc:
                if new is not None:
                    shutil.rmtree(new, ignore_errors=True)
                raise DataError(f"{figs}: cannot write the report's figures ({exc.strerror or exc}); nothing was "
                                "replaced. Free space or give a writable --out") from None  # fmt: skip

        def body(f) -> None:
            f.write(text)
            if new is not None:
                swap_in(new, figs)  # the figures first: the new report never points at missing ones

        try:
            return write_text_stream(self.out, body, "--out")
        finally:
            if new is not None and new.exists():
                shutil.rmtree(new, ignore_errors=True)


FIT_COLS = ["group", "error_class", "events", "events_beam_off", "fluence_n_cm2", "natural_equiv_years", "sigma_cm2",
            "sigma_lo_cm2", "sigma_hi_cm2", "fit", "fit_lo", "fit_hi", "norm", "norm_lo", "norm_hi", "norm_reference",
            "sigma_legacy_err_cm2", "fit_legacy_err", "note"]  # fmt: skip
TRUTH_COLS = ["group", "error_class", "events", "truth_events", "true_sigma_cm2", "sigma_cm2", "sigma_lo_cm2",
              "sigma_hi_cm2", "contains_true", "ratio_measured_to_true"]  # fmt: skip
MAIN_CLASSES = ("sdc", "sdc_critical", "sdc_tolerable", "due", "due_crash", "due_hang", "due_other")
DUE_COLS = ["group", "error_class", "events", "fluence_n_cm2", "sigma_cm2", "fit", "fit_lo", "fit_hi", "note"]
FIG7_COLS = ["group", "error_class", "events", "fit", "fig7_norm", "fig7_norm_lo", "fig7_norm_hi", "fig7_reference",
             "note"]  # fmt: skip
RUN_COLS = ["run", "group", "start_utc", "end_source", "wall_s", "kernel_time_s", "sdc", "due", "due_root_cause",
            "due_recovery", "fluence_n_cm2", "natural_equiv_h", "beam_off_s", "flux_gap_s", "flag", "excluded",
            "exclude_reason"]  # fmt: skip


def build_report(
    out: str | Path,
    fit: FitResult | FitData | str | Path | None = None,
    pvf: PvfResult | str | Path | None = None,
    evaluate: Sequence[str | Path | dict] = (),
    truth: Sequence[str | Path] = (),
    title: str | None = None,
) -> Path:
    """Write the report to ``out`` (.html: self-contained; .md: figures in ``<stem>_files/``).

    Every input is read (and refused, when it is not what it should be) before anything is drawn."""
    doc = _Doc(Path(out))
    data = load_fit(fit) if fit is not None else None
    truths = load_truths([Path(x) for x in truth]) if truth else None
    pv_cats = load_pvf(pvf) if pvf is not None else None
    ev = load_evaluate(evaluate) if evaluate else None
    simulated = bool(data and data.simulated) or bool(truth)
    name = data.meta.get("campaign", "") if data else ""
    title = title or f"diehardlab report{': ' + name if name else ''}"
    if simulated:
        doc.p("SIMULATED BEAM: these results come from the beam simulator, not from a facility.", "sim")
    doc.p(f"Generated {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC by diehardlab "
          f"{(data.meta.get('versions') or {}).get('diehardlab', '') if data else ''}.")  # fmt: skip
    if data is not None:
        _fit_sections(doc, data, simulated, truths)
    if pv_cats is not None:
        pv, cats = pv_cats
        doc.h(2, "NVBitFI: program vulnerability factor")
        if len(pv):
            doc.p(f"PVF = outcome count / injections made, per (app, instruction group, bit-flip model); "
                  f"intervals: {pv['ci_method'].iloc[0]}.")  # fmt: skip
            doc.image(_plots().pvf_plot(pv), "PVF split into critical and tolerable SDC")
        doc.table(pv, ["app", "group", "model", "outcome", "count", "injections", "pvf", "pvf_lo", "pvf_hi"])
        doc.h(3, "Outcome categories (all 19)")
        doc.table(cats, ["app", "group", "model", "category", "category_name", "outcome", "count"])
    if ev is not None:
        doc.h(2, "Application-level fault injection: regret")
        doc.p("Regret = clean accuracy - accuracy under injected faults (mean and standard deviation over trials).")
        doc.image(_plots().regret_plot(ev), "regret per model configuration")
        doc.table(ev, ["label", *EVAL_KEYS])
    return doc.write(title)


def _fit_sections(doc: _Doc, data: FitData, simulated: bool, truths: dict[str, dict] | None) -> None:
    g = data.groups
    meta = data.meta
    opts = meta.get("options") or {}
    sea = float(opts.get("sea_level_flux", 13.0) or 13.0)
    doc.h(2, "Cross sections and FIT")
    wall_end = meta.get("wall_end", "kernel")
    ends = ("the end of logs without a wall-clock end was read from the files' modification times (--wall-end "
            "mtime): these results depend on how the log files were copied") if wall_end == "mtime" else (
            "logs without a wall-clock end end at start + kernel time (file times are not read: the results follow "
            "from the files' contents and the campaign file alone)")  # fmt: skip
    doc.ul([
        f"fluence: {meta.get('fluence_method', g['fluence_method'].iloc[0] if len(g) else '')} "
        "(integrated = flux integrated over each run's window, beam-off excluded; mean-flux-x-acc-time = the "
        "reference parsers' mean flux x accumulated kernel time)",
        ends,
        f"intervals: {g['ci_method'].iloc[0] if len(g) else ''} (Garwood, exact Poisson; zero-event groups show "
        "their upper limit)",
        f"FIT = sigma x {sea:g} n/(cm^2 h) x 1e9 (JESD89A sea level); natural exposure = fluence / {sea:g} n/(cm^2 h): "
        "the time at sea level the beam time stands for",
        "events of runs that received no fluence are counted apart (events_beam_off), never in a cross section",
    ])  # fmt: skip
    main = g[g["error_class"].isin(MAIN_CLASSES)] if len(g) else g
    if len(g):
        classes = [c for c in ("sdc", "sdc_critical", "sdc_tolerable", "due") if c in set(g["error_class"])]
        doc.image(_plots().fit_plot(main, simulated, classes), "FIT per error class")
    doc.table(main, FIT_COLS)
    _attention(doc, g)
    if len(g) and "norm" in g and g["norm"].notna().any():
        ref = ", ".join(sorted(set(g["norm_reference"].dropna().astype(str)) - {""}))
        doc.h(3, f"Normalised cross sections (reference: {ref})")
        classes = [c for c in ("sdc", "sdc_critical", "sdc_tolerable", "due") if c in set(g["error_class"])]
        doc.image(_plots().normalised_plot(main, simulated, classes), "normalised cross sections")
    _due_sections(doc, g, simulated)
    _fig7_section(doc, g, simulated)
    if len(data.events):
        doc.h(3, "Cumulative events against fluence")
        doc.image(_plots().cumulative_plot(data.events, simulated), "cumulative events")
    t = data.truth
    if truths:
        t = compare(data.runs, g, truths)
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
        if len(r) > MAX_RUN_ROWS:  # the excluded and flagged ones first: they are what needs attention
            flagged = used[_text(used["flag"]).astype(bool)] if "flag" in used else used.iloc[:0]
            r = pd.concat([ex, flagged, used.drop(flagged.index)]).head(MAX_RUN_ROWS)
            doc.p(f"Showing {MAX_RUN_ROWS} of {len(data.runs)} runs (all of them are in runs.csv).")
        cols = RUN_COLS if "run" in r.columns else ["name", *RUN_COLS[1:]]
        doc.table(r, cols)
    notes = meta.get("notes") or []
    if notes:
        doc.h(3, "Notes (malformed lines, exclusions)")
        doc.ul(notes[:50] + ([f"... {len(notes) - 50} more in meta.json"] if len(notes) > 50 else []))


def _text(col: pd.Series) -> pd.Series:
    """A text column read back from CSV (empty cells are NaN floats there) as strings."""
    return col.astype(object).where(col.notna(), "").astype(str)


def _attention(doc: _Doc, g: pd.DataFrame) -> None:
    """What a reader must know about the table above: unknown splits, events without beam, mixed windows."""
    if g.empty:
        return
    crit = g[g["error_class"] == "sdc_critical"]
    unknown = sorted(crit[crit["events"].isna()]["group"])
    if unknown:
        doc.p("Critical/tolerable split unknown (SDCs in logs without diehardnet detail lines; shown empty, never "
              f"as tolerable) in: {', '.join(unknown)}.", "sim")  # fmt: skip
    if "events_beam_off" in g:
        off = g[(g["error_class"].isin(("sdc", "due"))) & (g["events_beam_off"].fillna(0) > 0)]
        if len(off):
            doc.p("Events in runs that received no fluence (beam off for the whole run window; check the DUT clock): "
                  + "; ".join(f"{r['group']}: {int(r['events_beam_off'])} {r['error_class'].upper()}"
                              for _, r in off.iterrows()) + ". They are in no cross section.", "sim")  # fmt: skip
    if "note" in g:
        mixed = sorted(set(g[_text(g["note"]).str.contains("mixes fluence windows")]["group"]))
        if mixed:
            doc.p(f"Groups whose runs' fluences use different windows (wall clock and start + kernel time): "
                  f"{', '.join(mixed)}.", "sim")  # fmt: skip


def _due_sections(doc: _Doc, g: pd.DataFrame, simulated: bool) -> None:
    if g.empty:
        return
    for prefix, title, what in (
        ("due_cause_", "DUE root causes", "root cause (CUDA errors and kernel messages from the logs and console "
         "captures; no-output crashes and hangs as the server saw them)"),
        ("due_recovery_", "DUE recovery levels", "the recovery that ended each DUE (journal, else the server copy's "
         "closing marker)"),
    ):  # fmt: skip
        sub = g[g["error_class"].astype(str).str.startswith(prefix)]
        if sub.empty:
            continue
        doc.h(3, title)
        doc.p(f"DUEs per {what}: counts, cross sections and FIT with the same intervals as above.")
        sub = sub.assign(error_class=sub["error_class"].str.removeprefix(prefix))
        classes = sorted(set(sub["error_class"]))
        doc.image(_plots().fit_plot(sub, simulated, classes, title), title)
        doc.table(sub, DUE_COLS)


def _fig7_section(doc: _Doc, g: pd.DataFrame, simulated: bool) -> None:
    if g.empty or "fig7_norm" not in g or not g["fig7_norm"].notna().any():
        return
    sub = g[g["fig7_norm"].notna() | _text(g["fig7_reference"]).astype(bool)]
    refs = ", ".join(sorted(set(sub["fig7_reference"].dropna().astype(str)) - {""}))
    doc.h(3, "Fig. 7: FIT normalised to the DieHardNet critical-SDC FIT")
    doc.p(f"Tolerable SDC, critical SDC and DUE FIT of each group over the critical-SDC FIT of its panel's reference "
          f"({refs}), with the exact interval of the ratio of two Poisson rates.")  # fmt: skip
    classes = [c for c in ("sdc_tolerable", "sdc_critical", "due") if c in set(sub["error_class"])]
    doc.image(_plots().fig7_plot(sub, simulated, classes), "Fig. 7 normalised FIT")
    doc.table(sub, FIG7_COLS)


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
