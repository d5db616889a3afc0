"""Cross sections and FIT per group with exact Poisson intervals (``diehard fit``).

    sigma = events / fluence (cm^2)      FIT = sigma x 13 n/(cm^2 h) x 1e9 (JESD89A sea level)

Each group (default: board, benchmark, ECC) gets, per error class, its events, fluence, cross section and
FIT with a Garwood interval (two-sided, or a one-sided upper limit); groups with zero events keep their
upper limit. Optionally each is normalised to a reference group with the exact interval of the ratio of
two Poisson rates. Every output names the fluence definition and the interval used, and says when the
beam was simulated.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import timezone
from pathlib import Path
from typing import Any

import pandas as pd
from diehardlab.analysis import intervals
from diehardlab.analysis.flux import FluxLog, factor_schedule, read_flux_log
from diehardlab.analysis.runs import FLUENCE_METHODS, Clocks, attach_flux, build_run, find_logs, merge_copies, scan_all
from diehardlab.analysis.truth import compare, load_truths

from diehardlab.campaign import CampaignFile, Facility, load_campaign
from diehardlab.cli import make_parser
from diehardlab.errors import ConfigError, DataError
from diehardlab.timezones import get_zone

HOURS_PER_BILLION = 1e9
ERROR_CLASSES = ("sdc", "sdc_critical", "sdc_tolerable", "due", "due_crash", "due_hang", "due_other")
GROUP_KEYS = ("board", "host", "benchmark", "model", "ecc")
RUN_COLUMNS = [
    "name", "group", "board", "host", "benchmark", "model", "ecc", "start_utc", "start_source", "end_utc",
    "end_source", "wall_s", "kernel_time_s", "iterations", "sdc", "sdc_critical", "sdc_tolerable",
    "sdc_split_known", "due", "due_class", "due_cause", "aborted", "ended", "unparsed_lines", "copies",
    "flux_log", "fluence_n_cm2", "fluence_integrated_n_cm2", "mean_flux_n_cm2_s", "beam_on_s", "beam_off_s",
    "flux_gap_s", "fluence_method", "excluded", "exclude_reason", "path",
]  # fmt: skip


@dataclass
class FitOptions:
    group_by: list[str]
    confidence: float = 0.95
    one_sided: bool = False
    fluence: str = "integrated"
    reference_group: str | None = None
    legacy: bool = False
    sea_level_flux: float = 13.0
    off_fraction: float = 0.1
    dut_timezone: str | None = None  # for hosts the campaign does not list
    wall_end: str = "auto"  # logs without a wall-clock end: "auto" (file mtime when plausible) or "kernel"
    jobs: int = 0

    @property
    def ci_method(self) -> str:
        side = "one-sided upper" if self.one_sided else "two-sided"
        return f"garwood {side} {self.confidence:.4g}"


@dataclass
class FitResult:
    runs: pd.DataFrame
    groups: pd.DataFrame
    options: FitOptions
    simulated: bool
    notes: list[str] = field(default_factory=list)
    truth: pd.DataFrame = field(default_factory=pd.DataFrame)
    events: pd.DataFrame = field(default_factory=pd.DataFrame)
    meta: dict[str, Any] = field(default_factory=dict)


def _versions() -> dict[str, str]:
    import numpy
    import scipy

    from diehardlab import __version__

    return {"diehardlab": __version__, "pandas": pd.__version__, "scipy": scipy.__version__, "numpy": numpy.__version__}


def _options(campaign: CampaignFile, overrides: dict[str, Any]) -> FitOptions:
    a = campaign.analysis
    opts = FitOptions(
        group_by=list(a.group_by),
        confidence=a.confidence,
        one_sided=a.one_sided,
        fluence=a.fluence,
        reference_group=a.reference_group,
        sea_level_flux=a.sea_level_flux,
        off_fraction=a.beam_off_fraction,
    )
    for k, v in overrides.items():
        if v is None:
            continue
        if not hasattr(opts, k):
            raise ConfigError(f"fit: unknown option {k!r} (have: {', '.join(asdict(opts))})")
        setattr(opts, k, v)
    bad = [k for k in opts.group_by if k not in GROUP_KEYS]
    if bad:
        raise ConfigError(f"group_by: unknown key(s) {', '.join(bad)}; use some of {', '.join(GROUP_KEYS)}")
    if opts.wall_end not in ("auto", "kernel"):
        raise ConfigError(f"wall_end: {opts.wall_end!r} is not 'auto' or 'kernel'")
    if opts.fluence not in FLUENCE_METHODS:
        raise ConfigError(f"fluence: {opts.fluence!r} is not one of {', '.join(FLUENCE_METHODS)}")
    if not 0 < opts.confidence < 1:
        raise ConfigError(f"confidence must be in (0, 1), got {opts.confidence}")
    return opts


def _flux_logs(
    campaign: CampaignFile, flux_files: Sequence[Path], log_paths: Sequence[Path], notes: list[str] | None = None
) -> list[FluxLog]:
    fac = campaign.facility
    zone = get_zone(fac.timezone) if fac else timezone.utc
    given = [Path(p) for p in flux_files] or (list(fac.flux_logs) if fac else [])
    # The beam simulator writes one facility log beside each DUT log.
    siblings = _beside(log_paths, ".chipir.txt")
    seen: set[Path] = set()
    out = []
    for i, f in enumerate([*given, *siblings]):
        rf = Path(f).resolve()
        if rf in seen:
            continue
        seen.add(rf)
        try:
            out.append(read_flux_log(f, zone))
        except DataError as exc:
            if i < len(given):
                raise
            # A run that died within the simulator's first row interval (or one still starting) leaves a log of
            # one row beside it: it covers nothing, and the other facility logs may still cover that run.
            if notes is not None:
                notes.append(f"skipped: {exc}")
    return out


def _beside(log_paths: Sequence[Path], suffix: str) -> list[Path]:
    """The files the beam simulator writes beside each log (``<log name><suffix>``) that exist."""
    return [q for q in (p.with_name(p.name + suffix) for p in log_paths) if q.is_file()]


def fit(
    campaign: CampaignFile | str | Path,
    logs_dirs: Sequence[str | Path],
    flux_files: Sequence[str | Path] | None = None,
    **overrides: Any,
) -> FitResult:
    """Per-run exposure and events, then per-group cross sections and FIT (see the module docstring)."""
    if not isinstance(campaign, CampaignFile):
        campaign = load_campaign(campaign)
    opts = _options(campaign, overrides)
    log_paths = find_logs([Path(d) for d in logs_dirs])
    if not log_paths:
        raise DataError(f"no .log files under {', '.join(str(d) for d in logs_dirs)}")
    notes: list[str] = []
    truths = load_truths(_beside(log_paths, ".truth.json"))
    fac = campaign.facility or _simulated_facility(truths, notes)
    if campaign.facility is None:
        campaign = campaign.model_copy(update={"facility": fac})
    if (
        fac.kind == "simulated"
        and "fluence" not in campaign.analysis.model_fields_set
        and "fluence" not in {k for k, v in overrides.items() if v is not None}
    ):
        # The simulator draws its events in beam-on kernel time: this definition matches the truth it wrote.
        opts.fluence = "mean-flux-x-acc-time"
        notes.append(
            "simulated beam: fluence 'mean-flux-x-acc-time' (the simulator's own definition; --fluence to change)"
        )
    flux_logs = _flux_logs(campaign, [Path(f) for f in flux_files or []], log_paths, notes)
    for fl in flux_logs:
        notes += fl.notes()
    fzone = get_zone(fac.timezone)
    dated = [(ff.since.replace(tzinfo=fzone).timestamp(), ff.value) for ff in fac.flux_factors]
    factor = factor_schedule(fac.flux_factor, dated)
    windows = [
        (w.start.replace(tzinfo=fzone).timestamp(), w.end.replace(tzinfo=fzone).timestamp()) for w in fac.beam_windows
    ]
    clocks = Clocks(
        dut={d.hostname: get_zone(d.timezone) for d in campaign.duts}
        | {d.name: get_zone(d.timezone) for d in campaign.duts},
        default_dut=get_zone(opts.dut_timezone) if opts.dut_timezone else None,
        server=get_zone(campaign.analysis.server_timezone),
    )
    simulated = fac.kind == "simulated" or bool(truths)

    if truths and fac.kind == "simulated":
        for name, doc in truths.items():
            ff = doc.get("flux_factor")
            if ff and fac.flux_factor and not math.isclose(float(ff), fac.flux_factor, rel_tol=1e-6):
                notes.append(
                    f"WARNING: {name}: the beam simulator counted with flux_factor {float(ff):g} (truth file), the "
                    f"campaign's [facility] flux_factor is {fac.flux_factor:g}: every fluence is off by that ratio; "
                    f"set flux_factor = {float(ff):g}"
                )
                break
    scans = [sc for sc in scan_all(log_paths, opts.jobs) if _is_log(sc, notes)]
    runs = []
    for primary, server, copies in merge_copies(scans):
        s = primary
        for lineno, why, text in s.unparsed_examples:
            notes.append(f"{s.path}:{lineno}: {why}: {text[:80]!r}")
        if s.unparsed > len(s.unparsed_examples):
            notes.append(f"{s.path}: {s.unparsed - len(s.unparsed_examples)} more unparsed lines")
        run = build_run(primary, server, copies, campaign, clocks, opts.wall_end)
        dut = next((d for d in campaign.duts if run.board == d.name), None)
        attenuation = _attenuation(fac, dut)
        sibling = str(Path(s.path).with_name(Path(s.path).name + ".chipir.txt"))
        attach_flux(run, flux_logs, factor, attenuation, opts.fluence, windows, opts.off_fraction, prefer=sibling)
        if run.excluded:
            notes.append(f"{s.path}: EXCLUDED: {run.exclude_reason}")
        elif run.fluence_n_cm2 == 0 and (run.sdc or run.due):
            notes.append(
                f"{s.path}: {run.sdc} SDC and {run.due} DUE with zero fluence (beam off for the whole run window "
                f"{run.start_utc:%Y-%m-%dT%H:%M:%S}..{run.end_utc:%H:%M:%S} UTC): check the DUT clock's time zone"
            )
        runs.append(run)
    wall_windows = any(not r.end_source.startswith("start + kernel") for r in runs if r.end_utc is not None)
    if simulated and opts.fluence == "integrated" and wall_windows:
        notes.append(
            "simulated beam: the simulator draws events in beam-on kernel time, and some run windows are wall-clock "
            "(server copies, file times): with fluence 'integrated' their cross sections come out lower by the "
            "kernel/wall duty cycle. Use --fluence mean-flux-x-acc-time to compare with the truth."
        )
    runs_df = _runs_frame(runs, opts.group_by)
    groups = group_table(runs_df, opts)
    events = _events_frame(runs, runs_df)
    result = FitResult(runs_df, groups, opts, simulated, notes, events=events)
    result.truth = compare(runs_df, groups, truths)
    result.meta = {
        "campaign": campaign.campaign.name,
        "facility": fac.kind,
        "simulated": simulated,
        "simulated_note": "results from a SIMULATED beam (beam simulator), not a facility" if simulated else "",
        "fluence_method": opts.fluence,
        "ci_method": opts.ci_method,
        "options": asdict(opts),
        "flux_logs": [fl.path for fl in flux_logs],
        "logs": [str(p) for p in log_paths],
        "runs": len(runs_df),
        "runs_excluded": int(runs_df["excluded"].sum()) if len(runs_df) else 0,
        "versions": _versions(),
        "notes": notes,
    }
    return result


def _simulated_facility(truths: dict[str, dict], notes: list[str]) -> Facility:
    """A campaign file without [facility] whose logs come from the beam simulator: its truth files say the
    counts-to-flux factor of the facility logs it wrote."""
    factors = {float(d["flux_factor"]) for d in truths.values() if d.get("flux_factor")}
    if len(factors) != 1:
        why = "the truth files disagree on flux_factor" if factors else "no beam-simulator truth files beside the logs"
        raise ConfigError(
            f"the campaign file has no [facility] table ({why}): add one with kind and flux_factor, e.g.\n"
            '[facility]\nkind = "chipir"\nflux_factor = 5.0e5\ntimezone = "Europe/London"'
        )
    ff = factors.pop()
    notes.append(f"no [facility] in the campaign: a simulated facility, flux_factor {ff:g} from the truth files")
    return Facility(kind="simulated", flux_factor=ff, timezone="UTC")


def _is_log(s, notes: list[str]) -> bool:
    """Folders of server logs also hold console captures and the like: a file with no libLogHelper record and
    no libLogHelper name is skipped, with a note."""
    if s.benchmark is None and not (s.it_lines or s.sdc or s.begin or s.server_begin or s.header or s.err_lines):
        notes.append(f"{s.path}: skipped: not a libLogHelper log (no log-name fields and no #BEGIN/#IT/#SDC)")
        return False
    return True


def _attenuation(fac, dut) -> float:
    if dut is None:
        return 1.0
    att = dut.attenuation if dut.attenuation is not None else 1.0
    if fac.kind == "lansce" and dut.distance_m is not None:
        r = fac.reference_distance_m
        att *= r * r / (dut.distance_m + r) ** 2
    return att


def _runs_frame(runs, group_by: Sequence[str]) -> pd.DataFrame:
    rows = []
    for r in runs:
        d = {c: getattr(r, c, None) for c in RUN_COLUMNS if c not in ("group", "wall_s")}
        d["wall_s"] = r.wall_s
        d["group"] = "/".join(str(getattr(r, k) or "-") for k in group_by)
        d["start_utc"] = r.start_utc.isoformat() if r.start_utc else ""
        d["end_utc"] = r.end_utc.isoformat() if r.end_utc else ""
        rows.append(d)
    return pd.DataFrame(rows, columns=RUN_COLUMNS)


def _events_frame(runs, runs_df: pd.DataFrame) -> pd.DataFrame:
    """Each counted event with the campaign's cumulative fluence when it happened (runs in start order)."""
    order = sorted((r for r in runs if not r.excluded), key=lambda r: r.start_utc)
    group_of = dict(zip(runs_df["name"], runs_df["group"]))
    rows = []
    cum = 0.0
    for r in order:
        f = r.fluence_n_cm2 if math.isfinite(r.fluence_n_cm2) else 0.0
        for e in r.events:
            frac = min(1.0, e.kernel_s / r.kernel_time_s) if e.kernel_s is not None and r.kernel_time_s > 0 else 1.0
            rows.append({"group": group_of[r.name], "error_class": "sdc", "critical": e.critical,
                         "cum_fluence_n_cm2": cum + f * frac, "run": r.name})  # fmt: skip
        if r.due:
            rows.append({"group": group_of[r.name], "error_class": "due", "critical": False,
                         "cum_fluence_n_cm2": cum + f, "run": r.name})  # fmt: skip
        cum += f
    return pd.DataFrame(rows, columns=["group", "error_class", "critical", "cum_fluence_n_cm2", "run"])


def _class_counts(sub: pd.DataFrame, split_campaign: bool = False) -> dict[str, int]:
    """Events per class. The critical/tolerable split is given where the logs carry diehardnet detail lines,
    and for groups without any SDC in a campaign that has such logs (zero critical SDC holds for any benchmark)."""
    counts = {
        "sdc": int(sub["sdc"].sum()),
        "due": int(sub["due"].sum()),
        "due_crash": int((sub["due_class"] == "crash").sum()),
        "due_hang": int((sub["due_class"] == "hang").sum()),
        "due_other": int(sub["due_class"].isin(["other", "unknown"]).sum()),
    }
    if sub["sdc_split_known"].any() or (split_campaign and counts["sdc"] == 0):
        counts["sdc_critical"] = int(sub["sdc_critical"].sum())
        counts["sdc_tolerable"] = int(sub["sdc_tolerable"].sum())
    return counts


def group_table(runs: pd.DataFrame, opts: FitOptions) -> pd.DataFrame:
    """The tidy result: one row per (group, error class)."""
    used = runs[~runs["excluded"].astype(bool)] if len(runs) else runs
    rows = []
    fit_per_sigma = opts.sea_level_flux * HOURS_PER_BILLION
    split_campaign = bool(len(used)) and bool(used["sdc_split_known"].any())
    for label, sub in used.groupby("group", sort=True):
        fluence = float(sub["fluence_n_cm2"].sum())
        keys = {k: sub[k].iloc[0] for k in opts.group_by}
        counts = _class_counts(sub, split_campaign)
        for cls in ERROR_CLASSES:
            if cls not in counts:
                continue
            n = counts[cls]
            lo_n, hi_n = intervals.garwood(n, opts.confidence, opts.one_sided)
            if fluence > 0:
                sigma, lo, hi = n / fluence, lo_n / fluence, hi_n / fluence
            else:  # no fluence: nothing measured; an event here says the run window or clock is wrong
                sigma, lo, hi = (math.inf if n else math.nan), 0.0, math.inf
            row = {
                "group": label,
                **keys,
                "error_class": cls,
                "events": n,
                "runs": len(sub),
                "fluence_n_cm2": fluence,
                "beam_on_s": float(sub["beam_on_s"].sum()),
                "beam_off_s": float(sub["beam_off_s"].sum()),
                "kernel_time_s": float(sub["kernel_time_s"].sum()),
                "sigma_cm2": sigma,
                "sigma_lo_cm2": lo,
                "sigma_hi_cm2": hi,
                "fit": sigma * fit_per_sigma,
                "fit_lo": lo * fit_per_sigma,
                "fit_hi": hi * fit_per_sigma,
                "ci_method": opts.ci_method,
                "fluence_method": opts.fluence,
            }
            if opts.legacy:
                err = intervals.legacy_error(n, sigma) if fluence > 0 else math.nan
                row["sigma_legacy_err_cm2"] = err
                row["fit_legacy_err"] = err * fit_per_sigma
            rows.append(row)
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    return normalise(df, opts.reference_group, opts.confidence)


def _match_reference(df: pd.DataFrame, ref: str) -> str:
    labels = list(dict.fromkeys(df["group"]))
    if ref in labels:
        return ref
    if "=" in ref:
        want = dict(part.split("=", 1) for part in ref.split(","))
        hits = [lbl for lbl in labels if all(str(df[df["group"] == lbl].iloc[0].get(k)) == v for k, v in want.items())]
        if len(hits) == 1:
            return hits[0]
    raise ConfigError(f"reference group {ref!r} matches none (or several) of the groups: {', '.join(labels)}")


def normalise(df: pd.DataFrame, reference: str | None, confidence: float) -> pd.DataFrame:
    """Cross sections relative to a reference group, per error class, with the exact rate-ratio interval.

    Without a reference, each class is normalised to its lowest non-zero cross section, as papers publish."""
    ref_label = _match_reference(df, reference) if reference else None
    df = df.copy()
    for col in ("norm_reference", "norm", "norm_lo", "norm_hi"):
        df[col] = "" if col == "norm_reference" else math.nan
    for _cls, sub in df.groupby("error_class"):
        if ref_label is not None:
            ref_rows = sub[sub["group"] == ref_label]
        else:
            ok = sub[(sub["events"] > 0) & (sub["fluence_n_cm2"] > 0)]
            ref_rows = ok.loc[[ok["sigma_cm2"].idxmin()]] if len(ok) else ok
        if ref_rows.empty:
            continue
        ref = ref_rows.iloc[0]
        for idx, row in sub.iterrows():
            ratio, lo, hi = intervals.rate_ratio(
                int(row["events"]), float(row["fluence_n_cm2"]), int(ref["events"]), float(ref["fluence_n_cm2"]),
                confidence,
            )  # fmt: skip
            if row["group"] == ref["group"]:
                ratio, lo, hi = 1.0, 1.0, 1.0  # the reference itself, by definition; its uncertainty is in the others
            df.loc[idx, ["norm", "norm_lo", "norm_hi"]] = [ratio, lo, hi]
            df.loc[idx, "norm_reference"] = ref["group"]
    return df


def write_result(result: FitResult, out_dir: str | Path) -> list[Path]:
    """fit.csv (tidy, per group and class), runs.csv, events.csv, truth.csv, meta.json; Parquet when possible."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    tables = {"fit": result.groups, "runs": result.runs, "events": result.events}
    if not result.truth.empty:
        tables["truth"] = result.truth
    for name, df in tables.items():
        df = df.copy()
        df.insert(0, "simulated_beam", result.simulated)
        p = out / f"{name}.csv"
        df.to_csv(p, index=False)
        written.append(p)
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            continue
        df.to_parquet(out / f"{name}.parquet", index=False)
        written.append(out / f"{name}.parquet")
    meta = out / "meta.json"
    meta.write_text(json.dumps(result.meta, indent=2, default=str) + "\n")
    written.append(meta)
    return written


def format_groups(df: pd.DataFrame) -> str:
    if df.empty:
        return "(no groups)"
    lines = [f"{'group':<40} {'class':<14} {'events':>6} {'fluence n/cm2':>13} {'sigma cm2 [lo, hi]':>36} {'FIT':>10}"]
    for _, r in df.iterrows():
        lines.append(
            f"{r['group'][:40]:<40} {r['error_class']:<14} {r['events']:>6} {r['fluence_n_cm2']:>13.4g} "
            f"{r['sigma_cm2']:>11.3e} [{r['sigma_lo_cm2']:.3e}, {r['sigma_hi_cm2']:.3e}] {r['fit']:>10.4g}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = make_parser("fit", "Cross sections and FIT per group, with exact (Garwood) Poisson intervals.")
    p.add_argument("--campaign", required=True, type=Path, help="campaign TOML file ([facility], [[dut]], [analysis])")
    p.add_argument("--logs", required=True, action="append", type=Path, help="folder of DUT/server logs (repeatable)")
    p.add_argument("--flux", action="append", type=Path, default=[], help="facility count log (repeatable)")
    p.add_argument("--out", type=Path, default=Path("fit-results"), help="output folder (default: fit-results)")
    p.add_argument("--fluence", choices=FLUENCE_METHODS, help="fluence definition (default: the campaign's)")
    p.add_argument("--group-by", help="comma-separated keys: " + ", ".join(GROUP_KEYS))
    p.add_argument("--confidence", type=float, help="confidence level (default: the campaign's, 0.95)")
    p.add_argument("--one-sided", action="store_true", default=None, help="one-sided upper limits")
    p.add_argument("--reference", help="normalise to this group (label or key=value,...); default: lowest rate")
    p.add_argument("--legacy", action="store_true", default=None, help="also the legacy 1.96*value/sqrt(N) bar")
    p.add_argument("--dut-timezone", help="clock zone of hosts the campaign does not list (IANA name)")
    p.add_argument("--wall-end", choices=("auto", "kernel"), default="auto",
                   help="end of logs without a wall-clock end: the file's modification time when plausible "
                   "(auto), or always start + kernel time")  # fmt: skip
    p.add_argument("--jobs", type=int, default=0, help="worker processes for parsing (default: one per core)")
    args = p.parse_args(argv)
    result = fit(
        args.campaign,
        args.logs,
        args.flux,
        fluence=args.fluence,
        group_by=args.group_by.split(",") if args.group_by else None,
        confidence=args.confidence,
        one_sided=args.one_sided,
        reference_group=args.reference,
        legacy=args.legacy,
        dut_timezone=args.dut_timezone,
        wall_end=args.wall_end,
        jobs=args.jobs,
    )
    for note in result.notes:
        print(note, file=sys.stderr)
    if result.simulated:
        print("NOTE: these results come from a SIMULATED beam (beam simulator), not a facility.")
    print(f"fluence: {result.options.fluence}; intervals: {result.options.ci_method}")
    print(format_groups(result.groups))
    if not result.truth.empty:
        print("\ntruth comparison (simulated beam):")
        cols = ["group", "error_class", "events", "truth_events", "true_sigma_cm2", "sigma_lo_cm2", "sigma_hi_cm2",
                "contains_true"]  # fmt: skip
        print(result.truth[cols].to_string(index=False))
    excluded = int(result.runs["excluded"].sum()) if len(result.runs) else 0
    print(f"\n{len(result.runs)} runs ({excluded} excluded), {len(result.groups)} rows")
    for path in write_result(result, args.out):
        print(f"wrote {path}")
    return 0
