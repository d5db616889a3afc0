"""Cross sections and FIT per group with exact Poisson intervals (``diehard fit``).

    sigma = events / fluence (cm^2)      FIT = sigma x 13 n/(cm^2 h) x 1e9 (JESD89A sea level)

Each group (default: board, benchmark, ECC and the #HEADER configuration) gets, per error class, its events,
fluence, cross section and FIT with a Garwood interval (two-sided, or a one-sided upper limit); groups with zero
events keep their upper limit. Events of runs that received no fluence are counted apart (``events_beam_off``)
and never pooled into a cross section. DUEs are broken down by root cause and by the recovery that ended them.
Each class is normalised to a reference group with the exact interval of the ratio of two Poisson rates, and
(Fig. 7 of the DieHardNet paper) to the critical-SDC rate of each board's DieHardNet group. Every output names
the fluence definition and the interval used, and says when the beam was simulated.

:func:`fit` is the whole computation from files (what a dashboard calls to show the numbers ``diehard fit``
prints); :func:`write_result` writes its tables as one set.
"""

from __future__ import annotations

import json
import math
import sys
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import timedelta, timezone
from pathlib import Path, PurePath
from typing import Any

import pandas as pd
from diehardlab.analysis import due as dues
from diehardlab.analysis import intervals
from diehardlab.analysis.flux import FluxLog, factor_schedule, merge_flux_logs, read_flux_log
from diehardlab.analysis.runs import (
    FLUENCE_METHODS,
    KERNEL_WINDOW,
    WALL_END,
    Clocks,
    Run,
    attach_flux,
    build_run,
    find_logs,
    merge_copies,
    scan_all,
)
from diehardlab.analysis.truth import compare, load_truths

from diehardlab.campaign import Analysis, CampaignFile, Facility, load_campaign
from diehardlab.cli import make_parser
from diehardlab.errors import ConfigError, DataError
from diehardlab.outfiles import replace_folder
from diehardlab.timezones import get_zone

HOURS_PER_BILLION = 1e9
FIG7_REFERENCE = Analysis.model_fields["fig7_reference"].default  # the campaign's default
HOURS_PER_YEAR = 8766.0
ERROR_CLASSES = ("sdc", "sdc_critical", "sdc_tolerable", "due", "due_crash", "due_hang", "due_other")
GROUP_KEYS = ("board", "host", "benchmark", "model", "ecc", "config")
FIG7_CLASSES = ("sdc_tolerable", "sdc_critical", "due")
NO_HEADER = "(no #HEADER)"
RUN_COLUMNS = [
    "run", "name", "group", "board", "host", "benchmark", "model", "ecc", "ecc_source", "config", "start_utc",
    "start_source", "end_utc", "end_source", "fluence_window", "wall_s", "kernel_time_s", "iterations", "sdc",
    "sdc_critical", "sdc_tolerable", "sdc_split_known", "due", "due_class", "due_cause", "due_root_cause",
    "due_detail", "due_cause_source", "due_recovery", "due_recovery_source", "aborted", "ended", "unparsed_lines",
    "copies", "flux_log", "fluence_n_cm2", "fluence_integrated_n_cm2", "mean_flux_n_cm2_s", "natural_equiv_h",
    "beam_on_s", "beam_off_s", "flux_gap_s", "flux_unknown_s", "fluence_method", "events_beam_off", "flag",
    "excluded", "exclude_reason", "path",
]  # fmt: skip
OUTPUTS = ("fit", "runs", "events", "truth")


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
    wall_end: str = "kernel"  # logs without a wall-clock end: start + kernel time, or "mtime" (file time)
    flux_gap_s: float | None = None  # bridge limit of flux-log gaps (default: the campaign's [facility])
    journal: str | None = None  # the campaign journal (default: the campaign's [server] journal, when it exists)
    header_ignore: list[str] = field(default_factory=list)
    fig7_per: list[str] = field(default_factory=lambda: ["board"])
    fig7_reference: str = FIG7_REFERENCE
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
        wall_end=a.wall_end,
        header_ignore=list(a.header_ignore),
        fig7_per=list(a.fig7_per),
        fig7_reference=a.fig7_reference,
    )
    for k, v in overrides.items():
        if v is None:
            continue
        if not hasattr(opts, k):
            raise ConfigError(f"fit: unknown option {k!r} (have: {', '.join(asdict(opts))})")
        setattr(opts, k, v)
    ref_keys = [part.split("=", 1)[0].strip() for part in opts.fig7_reference.split(",") if "=" in part]
    for what, keys in (("group_by", opts.group_by), ("fig7_per", opts.fig7_per), ("fig7_reference", ref_keys)):
        bad = [k for k in keys if k not in GROUP_KEYS and not (k.startswith("header.") and len(k) > 7)]
        if bad:
            raise ConfigError(
                f"{what}: unknown key(s) {', '.join(bad)}; use some of {', '.join(GROUP_KEYS)} or header.<key>"
            )
    if not opts.group_by:
        raise ConfigError("group_by: give at least one key, e.g. board")
    if opts.wall_end not in WALL_END:
        raise ConfigError(f"--wall-end: {opts.wall_end!r} is not one of {', '.join(WALL_END)}")
    if opts.fluence not in FLUENCE_METHODS:
        raise ConfigError(f"--fluence: {opts.fluence!r} is not one of {', '.join(FLUENCE_METHODS)}")
    if not 0 < opts.confidence < 1:
        raise ConfigError(f"--confidence must be in (0, 1), got {opts.confidence}")
    if not (math.isfinite(opts.sea_level_flux) and opts.sea_level_flux > 0):
        raise ConfigError(f"sea_level_flux must be a positive number of n/(cm^2 h), got {opts.sea_level_flux}")
    if opts.flux_gap_s is not None and not (math.isfinite(opts.flux_gap_s) and opts.flux_gap_s >= 0):
        raise ConfigError(f"--flux-gap must be a number of seconds >= 0, got {opts.flux_gap_s}")
    if opts.jobs < 0:
        raise ConfigError(f"--jobs must be >= 0 (0: one per core), got {opts.jobs}")
    if "=" not in opts.fig7_reference:
        raise ConfigError(
            f"fig7_reference: {opts.fig7_reference!r} is not key=value[,key=value] (e.g. model=diehardnet)"
        )
    return opts


def _flux_logs(
    campaign: CampaignFile,
    flux_files: Sequence[Path],
    log_paths: Sequence[Path],
    bridge_s: float,
    notes: list[str] | None = None,
) -> list[FluxLog]:
    """The facility's files as one timeline, then each file the beam simulator wrote beside a log (each its
    own timeline: it covers its run only)."""
    fac = campaign.facility
    zone = get_zone(fac.timezone, "[facility] timezone") if fac else timezone.utc
    files = [Path(p) for p in flux_files] or (list(fac.flux_logs) if fac else [])
    max_flux = fac.max_flux_n_cm2_s if fac else None
    factor = _factor(fac) if fac else None

    def max_rate(t):
        return max_flux / factor(t)

    limit = max_rate if (max_flux and factor is not None) else None
    seen: set[Path] = set()
    facility: list[FluxLog] = []
    for f in files:
        rf = Path(f).resolve()
        if rf in seen:
            continue
        seen.add(rf)
        facility.append(read_flux_log(f, zone, bridge_s=bridge_s, max_rate=limit))
    out = [merge_flux_logs(facility, bridge_s, limit)] if facility else []
    for f in _beside(log_paths, ".chipir.txt"):
        rf = f.resolve()
        if rf not in seen:
            seen.add(rf)
            try:
                out.append(read_flux_log(f, zone, bridge_s=bridge_s, max_rate=limit))
            except DataError as exc:
                # A run that died within the simulator's first row interval (or one still starting) leaves a log
                # of one row beside it: it covers nothing, and the other facility logs may still cover that run.
                # The facility's own files above stay strict.
                if notes is None:
                    raise
                notes.append(f"skipped: {exc}")
    return out


def _factor(fac: Facility):
    fzone = get_zone(fac.timezone, "[facility] timezone")
    dated = [(ff.since.replace(tzinfo=fzone).timestamp(), ff.value) for ff in fac.flux_factors]
    return factor_schedule(fac.flux_factor, dated)


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
    found = find_logs([Path(d) for d in logs_dirs])
    consoles_paths = [p for p in found if p.name.endswith(".console.log")]
    log_paths = [p for p in found if not p.name.endswith(".console.log")]
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
    bridge_s = opts.flux_gap_s if opts.flux_gap_s is not None else fac.flux_gap_s
    flux_logs = _flux_logs(campaign, [Path(f) for f in flux_files or []], log_paths, bridge_s, notes)
    for fl in flux_logs:
        notes += fl.notes()
    fzone = get_zone(fac.timezone, "[facility] timezone")
    factor = _factor(fac)
    windows = [
        (w.start.replace(tzinfo=fzone).timestamp(), w.end.replace(tzinfo=fzone).timestamp()) for w in fac.beam_windows
    ]
    clocks = Clocks(
        dut={d.hostname: get_zone(d.timezone) for d in campaign.duts}
        | {d.name: get_zone(d.timezone) for d in campaign.duts},
        default_dut=get_zone(opts.dut_timezone, "--dut-timezone") if opts.dut_timezone else None,
        server=get_zone(campaign.analysis.server_timezone, "[analysis] server_timezone"),
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
    runs: list[Run] = []
    for primary, server, members in merge_copies(scans):
        s = primary
        for lineno, why, text in s.unparsed_examples:
            notes.append(f"{s.path}:{lineno}: {why}: {text[:80]!r}")
        if s.unparsed > len(s.unparsed_examples):
            notes.append(f"{s.path}: {s.unparsed - len(s.unparsed_examples)} more unparsed lines")
        run, run_notes = build_run(primary, server, members, campaign, clocks, opts.wall_end, fzone)
        notes += run_notes
        if server is not None and server.server_end == "due":
            run.due_marker = dues.marker_level(server.due_reason, None) or ""
        runs.append(run)
    _unique_run_names(runs, notes)
    _unused_ecc_rules(runs, campaign, notes)
    _explain_dues(runs, campaign, consoles_paths, opts, notes)
    for run in runs:
        dut = next((d for d in campaign.duts if run.board == d.name), None)
        sibling = str(Path(run.path).with_name(Path(run.path).name + ".chipir.txt"))
        attach_flux(run, flux_logs, factor, _attenuation(fac, dut), opts.fluence, windows, opts.off_fraction,
                    prefer=sibling)  # fmt: skip
        if run.excluded:
            notes.append(f"{run.path}: EXCLUDED: {run.exclude_reason}")
        elif run.fluence_n_cm2 == 0 and (run.sdc or run.due):
            run.events_beam_off = run.sdc + run.due
            run.flag = "events without beam"
            notes.append(
                f"{run.path}: {run.sdc} SDC and {run.due} DUE with zero fluence (beam off for the whole run window "
                f"{run.start_utc:%Y-%m-%dT%H:%M:%S}..{run.end_utc:%H:%M:%S} UTC): counted as events_beam_off, not in "
                "any cross section; check the DUT clock's time zone"
            )
    _assign_configs(runs, opts.group_by, set(opts.header_ignore), notes)
    wall_windows = any(r.fluence_window != KERNEL_WINDOW for r in runs if r.end_utc is not None)
    if simulated and opts.fluence == "integrated" and wall_windows:
        notes.append(
            "simulated beam: the simulator draws events in beam-on kernel time, and some run windows are wall-clock "
            "(server copies, file times): with fluence 'integrated' their cross sections come out lower by the "
            "kernel/wall duty cycle. Use --fluence mean-flux-x-acc-time to compare with the truth."
        )
    if opts.wall_end == "mtime":
        notes.append(
            "--wall-end mtime: the end of logs without a wall-clock end is read from the files' modification times; "
            "a copy that did not keep them gives other results"
        )
    runs_df = _runs_frame(runs, opts)
    groups = group_table(runs_df, opts)
    groups = fig7(groups, opts, notes) if len(groups) else groups
    for g, windows_used in _mixed_windows(runs_df).items():
        notes.append(f"group {g} mixes fluence windows ({windows_used}): its runs' fluences are not defined alike")
    events = _events_frame(runs, runs_df)
    result = FitResult(runs_df, groups, opts, simulated, notes, events=events)
    result.truth = compare(runs_df, groups, truths)
    result.meta = {
        "campaign": campaign.campaign.name,
        "facility": fac.kind,
        "simulated": simulated,
        "simulated_note": "results from a SIMULATED beam (beam simulator), not a facility" if simulated else "",
        "fluence_method": opts.fluence,
        "wall_end": opts.wall_end,
        "ci_method": opts.ci_method,
        "legacy_bar": "1.96 x value / sqrt(N) for every N >= 1 (the ipdps2021 tables)" if opts.legacy else "",
        "options": asdict(opts),
        "flux_logs": [f for fl in flux_logs for f in (fl.files or [fl.path])],
        "flux_gap_s": bridge_s,
        "logs": [str(p) for p in log_paths],
        "consoles": [str(p) for p in consoles_paths],
        "runs": len(runs_df),
        "runs_excluded": int(runs_df["excluded"].sum()) if len(runs_df) else 0,
        "versions": _versions(),
        "notes": notes,
    }
    return result


def _unused_ecc_rules(runs: list[Run], campaign: CampaignFile, notes: list[str]) -> None:
    """A [[analysis.ecc]] rule that gave no run its ECC is said: a misspelt board or folder must not leave the
    runs it meant without ECC (pooled with the other mode) in silence."""
    used = {r.ecc_source for r in runs}
    for i, rule in enumerate(campaign.analysis.ecc, 1):
        if f"campaign [[analysis.ecc]] rule {i}" not in used:
            where = ", ".join(f"{k}={v!r}" for k, v in rule.model_dump(exclude_none=True).items() if k != "value")
            notes.append(
                f"campaign [[analysis.ecc]] rule {i} ({where}) sets the ECC of no log: check its board, folder "
                "and dates against the log names and folders"
            )


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
    """Folders of server logs also hold other files: a file with no libLogHelper record and no libLogHelper
    name is skipped, with a note."""
    if s.benchmark is None and not (s.it_lines or s.sdc or s.begin or s.server_begin or s.header or s.err_lines):
        notes.append(f"{s.path}: skipped: not a libLogHelper log (no log-name fields and no #BEGIN/#IT/#SDC)")
        return False
    if s.lines and s.unparsed == s.lines:
        # A log-like name on binary garbage (or another format): no record at all, so no run, and above all no
        # "no #END" DUE. An empty log (a run that died before its first line) is still read as one.
        notes.append(f"{s.path}: skipped: none of its {s.lines} lines is a libLogHelper record (binary or another "
                     "format?); move it out of the log folders")  # fmt: skip
        return False
    return True


def _unique_run_names(runs: list[Run], notes: list[str]) -> None:
    """``run``: the file name, or, for names that several runs share, the shortest folder suffix that tells
    them apart (``ECCON/2016_..log``)."""
    by_name: dict[str, list[Run]] = defaultdict(list)
    for r in runs:
        by_name[r.name].append(r)
    for name, same in by_name.items():
        if len(same) == 1:
            same[0].run = name
            continue
        parts = [PurePath(r.path).parent.parts for r in same]
        depth = 1
        while depth <= max(len(p) for p in parts):
            labels = ["/".join(p[-depth:]) for p in parts]
            if len(set(labels)) == len(labels):
                break
            depth += 1
        for r, p in zip(same, parts):
            r.run = "/".join([*p[-depth:], name])
        notes.append(
            f"{name}: {len(same)} logs with this name whose contents differ: {len(same)} runs "
            f"({', '.join(r.run for r in same)})"
        )


def _explain_dues(runs: list[Run], campaign: CampaignFile, consoles: Sequence[Path], opts: FitOptions,
                  notes: list[str]) -> None:  # fmt: skip
    """Root cause and recovery level of each DUE (see diehardlab.analysis.due); a run whose last log text is a
    CUDA or kernel failure is a DUE even when the benchmark then wrote #END (it could not go on)."""
    journal = Path(opts.journal) if opts.journal else campaign.server.journal
    if opts.journal and not journal.is_file():
        raise DataError(f"{journal}: no such journal (--journal)")
    episodes: dict[str, list[dues.Episode]] = {}
    if journal.is_file():
        try:
            episodes = dues.read_journal_episodes(journal)
        except Exception as exc:  # the campaign's journal is supporting evidence: an unreadable one is said, not fatal
            if opts.journal:  # but a journal named on the command line is one the user meant to be read
                raise DataError(f"--journal: {exc}") from None
            notes.append(f"{journal}: journal not read ({exc}); DUE recovery levels from the server copies only")
    host_to_board = {d.hostname: d.name for d in campaign.duts}
    boards = {d.name for d in campaign.duts} | set(host_to_board)
    con: dict[str, dues.Console] = {}
    for p in consoles:
        stem = p.name.removesuffix(".console.log")
        board = host_to_board.get(stem, stem)
        if stem not in boards:
            notes.append(f"{p}: console capture of {stem!r}, which is no DUT of the campaign: not used")
            continue
        con[board] = dues.read_console(p, board)
    by_board: dict[str, list[Run]] = defaultdict(list)
    for r in runs:
        if r.start_utc is not None:
            by_board[r.board].append(r)
    for rs in by_board.values():
        rs.sort(key=lambda r: r.start_utc)
    used: set[int] = set()
    for board, rs in by_board.items():
        eps = episodes.get(board, [])
        for i, r in enumerate(rs):
            texts = [(f"log {Path(p).name}", dues.log_tail(p)) for p in r.copy_paths]
            if not r.due:
                hit = next((h for h in (dues.classify_text(t) for _, t in texts) if h), None)
                # Only a specific failure turns a clean end into a DUE: a benchmark may print "CUDA error: none".
                if hit and hit[0] not in ("cuda-error", "app-signal"):
                    r.due, r.due_class, r.due_cause = 1, "crash", "log text"
                    notes.append(f"{r.path}: ends with {hit[0]} ({hit[1][:80]!r}) before #END: counted as a DUE")
            if not r.due:
                continue
            end = r.end_utc or r.start_utc
            nxt = rs[i + 1].start_utc if i + 1 < len(rs) else None
            ep = None
            for e in eps:
                if id(e) in used or e.time < end - _SKEW or e.time < r.start_utc - _SKEW:
                    continue
                if nxt is not None and e.time > nxt + _SKEW:
                    break
                ep = e
                used.add(id(e))
                break
            window = dues.console_window(end, nxt, ep)
            why = dues.explain(r.due_cause, texts, con.get(board), window, ep, r.due_marker or None)
            r.due_root_cause, r.due_detail, r.due_cause_source = why.root_cause, why.detail, why.source
            r.due_recovery, r.due_recovery_source = why.recovery, why.recovery_source


_SKEW = timedelta(seconds=5)  # server and console clocks against the DUT's


def _attenuation(fac, dut) -> float:
    if dut is None:
        return 1.0
    att = dut.attenuation if dut.attenuation is not None else 1.0
    if fac.kind == "lansce" and dut.distance_m is not None:
        r = fac.reference_distance_m
        att *= r * r / (dut.distance_m + r) ** 2
    return att


def _short(value: str) -> str:
    v = PurePath(value).name if "/" in value else value
    return v if len(v) <= 40 else v[:37] + "..."


def _key(r: Run, k: str) -> str:
    if k.startswith("header."):
        return r.header.get(k[7:], "")
    return str(getattr(r, k) or "")


def _assign_configs(runs: list[Run], group_by: Sequence[str], ignore: set[str], notes: list[str]) -> None:
    """``config``: among runs that agree on the other group keys, the #HEADER keys whose values differ, with
    this run's values (``abft=dumb_abft,img_list_path=voc.2012.1K.txt``). Runs whose headers agree pool; a run
    without a #HEADER pools with them, or stands apart (``(no #HEADER)``) when the others differ."""
    if "config" not in group_by:
        return
    base = [k for k in group_by if k != "config"]
    buckets: dict[tuple[str, ...], list[Run]] = defaultdict(list)
    for r in runs:
        buckets[tuple(_key(r, k) for k in base)].append(r)
    for key, rs in buckets.items():
        with_h = [r for r in rs if r.header]
        names = sorted({k for r in with_h for k in r.header} - ignore)
        differ = [k for k in names if len({r.header.get(k, "?") for r in with_h}) > 1]
        for r in rs:
            if not differ:
                r.config = ""
            elif not r.header:
                r.config = NO_HEADER
            else:
                r.config = ",".join(f"{k}={_short(r.header.get(k, '?'))}" for k in differ)
        if differ:
            notes.append(
                f"{'/'.join(x or '-' for x in key)}: runs differ in #HEADER {', '.join(differ)}: "
                f"{len({r.config for r in rs})} configurations, not pooled"
            )


def _label(r: Run, group_by: Sequence[str]) -> str:
    parts = [_key(r, k) or "-" for k in group_by if k != "config"]
    if "config" in group_by and r.config:
        parts.append(r.config)
    return "/".join(parts)


def _runs_frame(runs: list[Run], opts: FitOptions) -> pd.DataFrame:
    rows = []
    for r in runs:
        d = {c: getattr(r, c, None) for c in RUN_COLUMNS if c not in ("group", "wall_s", "natural_equiv_h")}
        d["wall_s"] = r.wall_s
        d["group"] = _label(r, opts.group_by)
        d["start_utc"] = r.start_utc.isoformat() if r.start_utc else ""
        d["end_utc"] = r.end_utc.isoformat() if r.end_utc else ""
        d["natural_equiv_h"] = r.fluence_n_cm2 / opts.sea_level_flux if math.isfinite(r.fluence_n_cm2) else math.nan
        for k in opts.group_by:
            if k.startswith("header."):
                d[k] = _key(r, k)
        rows.append(d)
    cols = RUN_COLUMNS + [k for k in opts.group_by if k.startswith("header.")]
    df = pd.DataFrame(rows, columns=cols)
    for c in ("sdc_critical", "sdc_tolerable"):
        df[c] = df[c].astype("Int64")  # empty where the split is unknown
    return df


def _mixed_windows(runs: pd.DataFrame) -> dict[str, str]:
    used = runs[~runs["excluded"].astype(bool) & (runs["fluence_window"] != "")] if len(runs) else runs
    out = {}
    for label, sub in used.groupby("group", sort=True):
        counts = sub["fluence_window"].value_counts()
        if len(counts) > 1:
            out[label] = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
    return out


def _events_frame(runs: list[Run], runs_df: pd.DataFrame) -> pd.DataFrame:
    """Each counted event with the campaign's cumulative fluence when it happened (runs in start order)."""
    group_of = dict(zip(runs_df["run"], runs_df["group"]))
    order = sorted((r for r in runs if not r.excluded and r.fluence_n_cm2 > 0), key=lambda r: (r.start_utc, r.run))
    rows = []
    cum = 0.0
    for r in order:
        f = r.fluence_n_cm2
        for e in r.events:
            frac = min(1.0, e.kernel_s / r.kernel_time_s) if e.kernel_s is not None and r.kernel_time_s > 0 else 1.0
            rows.append({"group": group_of[r.run], "error_class": "sdc", "critical": e.critical,
                         "cum_fluence_n_cm2": cum + f * frac, "run": r.run})  # fmt: skip
        if r.due:
            rows.append({"group": group_of[r.run], "error_class": "due", "critical": None,
                         "cum_fluence_n_cm2": cum + f, "run": r.run})  # fmt: skip
        cum += f
    return pd.DataFrame(rows, columns=["group", "error_class", "critical", "cum_fluence_n_cm2", "run"])


def _class_counts(sub: pd.DataFrame, causes: Sequence[str], recoveries: Sequence[str]) -> tuple[dict, str]:
    """Events per class in runs under beam, and a note on what is unknown. The critical/tolerable split is
    known where every run with an SDC carries diehardnet detail lines (zero SDC: zero of each, for any
    benchmark); else both are unknown (None), never all tolerable."""
    counts: dict[str, int | None] = {
        "sdc": int(sub["sdc"].sum()),
        "due": int(sub["due"].sum()),
        "due_crash": int(((sub["due_class"] == "crash") & (sub["due"] > 0)).sum()),
        "due_hang": int(((sub["due_class"] == "hang") & (sub["due"] > 0)).sum()),
        "due_other": int((sub["due_class"].isin(["other", "unknown"]) & (sub["due"] > 0)).sum()),
    }
    with_sdc = sub[sub["sdc"] > 0]
    unknown = with_sdc[~with_sdc["sdc_split_known"].astype(bool)]
    note = ""
    if len(unknown):
        counts["sdc_critical"] = counts["sdc_tolerable"] = None
        note = (f"critical/tolerable split unknown: {len(unknown)} of {len(with_sdc)} runs with SDC have no "
                "diehardnet detail lines")  # fmt: skip
    else:
        counts["sdc_critical"] = int(sub["sdc_critical"].fillna(0).sum())
        counts["sdc_tolerable"] = int(sub["sdc_tolerable"].fillna(0).sum())
    dued = sub[sub["due"] > 0]
    for c in causes:
        counts[f"due_cause_{c}"] = int((dued["due_root_cause"] == c).sum())
    for lv in recoveries:
        counts[f"due_recovery_{lv}"] = int((dued["due_recovery"] == lv).sum())
    return counts, note


def group_table(runs: pd.DataFrame, opts: FitOptions) -> pd.DataFrame:
    """The tidy result: one row per (group, error class). Only runs under beam (fluence > 0) give events;
    the events of runs without fluence are ``events_beam_off``."""
    used = runs[~runs["excluded"].astype(bool)] if len(runs) else runs
    rows = []
    fit_per_sigma = opts.sea_level_flux * HOURS_PER_BILLION
    dued = used[used["due"] > 0] if len(used) else used
    causes = sorted(set(dued["due_root_cause"]) - {""}) if len(dued) else []
    recoveries = sorted(set(dued["due_recovery"]) - {""}) if len(dued) else []
    keys_out = [k for k in opts.group_by]
    for label, sub in used.groupby("group", sort=True):
        beam = sub[sub["fluence_n_cm2"] > 0]
        off = sub[(sub["fluence_n_cm2"] <= 0) & ((sub["sdc"] > 0) | (sub["due"] > 0))]
        fluence = float(beam["fluence_n_cm2"].sum())
        keys = {k: sub[k].iloc[0] for k in keys_out}
        for k in GROUP_KEYS:  # the other keys too, where the group's runs agree: references may name them
            if k not in keys:
                vals = set(sub[k].fillna("").astype(str))
                keys[k] = vals.pop() if len(vals) == 1 else "(mixed)"
        counts, split_note = _class_counts(beam, causes, recoveries)
        off_counts, _ = _class_counts(off, causes, recoveries)
        windows = ", ".join(sorted(set(beam["fluence_window"]) - {""}))
        for cls, n in counts.items():
            notes = []
            if fluence <= 0:
                notes.append("no fluence: nothing measured (sigma undefined, upper limit infinite)")
            if n is None:
                notes.append(split_note)
                sigma = lo = hi = math.nan
            else:
                lo_n, hi_n = intervals.garwood(n, opts.confidence, opts.one_sided)
                if fluence > 0:
                    sigma, lo, hi = n / fluence, lo_n / fluence, hi_n / fluence
                else:
                    sigma, lo, hi = math.nan, 0.0, math.inf
            if "," in windows:
                notes.append(f"mixes fluence windows: {windows}")
            off_n = off_counts.get(cls) or 0
            row = {
                "group": label,
                **keys,
                "error_class": cls,
                "events": n,
                "events_beam_off": off_n,
                "runs": len(beam),
                "runs_beam_off": len(off),
                "fluence_n_cm2": fluence,
                "natural_equiv_h": fluence / opts.sea_level_flux,
                "natural_equiv_years": fluence / opts.sea_level_flux / HOURS_PER_YEAR,
                "beam_on_s": float(beam["beam_on_s"].sum()),
                "beam_off_s": float(beam["beam_off_s"].sum()),
                "kernel_time_s": float(beam["kernel_time_s"].sum()),
                "sigma_cm2": sigma,
                "sigma_lo_cm2": lo,
                "sigma_hi_cm2": hi,
                "fit": sigma * fit_per_sigma,
                "fit_lo": lo * fit_per_sigma,
                "fit_hi": hi * fit_per_sigma,
                "ci_method": opts.ci_method,
                "fluence_method": opts.fluence,
                "fluence_windows": windows,
            }
            if opts.legacy:
                err = intervals.legacy_error(n, sigma) if (n is not None and fluence > 0) else math.nan
                row["sigma_legacy_err_cm2"] = err
                row["fit_legacy_err"] = err * fit_per_sigma
                if n == 0 and fluence > 0:
                    notes.append("legacy bar undefined at 0 events")
            row["note"] = "; ".join(notes)
            rows.append(row)
    df = pd.DataFrame(rows)
    if df.empty:  # every run excluded: the table still says what it would hold
        return pd.DataFrame(columns=["group", *keys_out, "error_class", "events", "events_beam_off", "runs",
                                     "fluence_n_cm2", "sigma_cm2", "sigma_lo_cm2", "sigma_hi_cm2", "fit", "fit_lo",
                                     "fit_hi", "ci_method", "fluence_method", "note"])  # fmt: skip
    df["events"] = df["events"].astype("Int64")
    return normalise(df, opts.reference_group, opts.confidence)


def _match_reference(df: pd.DataFrame, ref: str) -> str:
    labels = list(dict.fromkeys(df["group"]))
    if ref in labels:
        return ref
    if "=" in ref:
        hits = _matching(df, ref)
        if len(hits) == 1:
            return hits[0]
    raise ConfigError(f"reference group {ref!r} matches none (or several) of the groups: {', '.join(labels)}")


def _matching(df: pd.DataFrame, spec: str) -> list[str]:
    """Group labels whose key values equal (case-insensitively) every ``key=value`` of ``spec``."""
    want = dict(part.split("=", 1) for part in spec.split(",") if "=" in part)
    labels = list(dict.fromkeys(df["group"]))
    out = []
    for lbl in labels:
        first = df[df["group"] == lbl].iloc[0]
        if all(str(first.get(k, "")).lower() == v.strip().lower() for k, v in want.items()):
            out.append(lbl)
    return out


def _ratio(row: pd.Series, ref: pd.Series, confidence: float) -> tuple[float, float, float, str]:
    n, n_ref = row["events"], ref["events"]
    if pd.isna(n) or pd.isna(n_ref):
        return math.nan, math.nan, math.nan, "ratio unknown: an event count is unknown"
    f, f_ref = float(row["fluence_n_cm2"]), float(ref["fluence_n_cm2"])
    if f <= 0 or f_ref <= 0:
        return math.nan, math.nan, math.nan, "ratio undefined: no fluence"
    ratio, lo, hi = intervals.rate_ratio(int(n), f, int(n_ref), f_ref, confidence)
    note = ""
    if int(n_ref) == 0:
        note = "ratio unbounded above: the reference has 0 events"
    return ratio, lo, hi, note


def _add_note(df: pd.DataFrame, idx, text: str) -> None:
    if text:
        old = df.at[idx, "note"]
        df.at[idx, "note"] = f"{old}; {text}" if old else text


def normalise(df: pd.DataFrame, reference: str | None, confidence: float) -> pd.DataFrame:
    """Cross sections relative to a reference group, per error class, with the exact rate-ratio interval.

    Without a reference, each class is normalised to its lowest non-zero cross section, as papers publish."""
    ref_label = _match_reference(df, reference) if reference else None
    df = df.copy()
    if "note" not in df:
        df["note"] = ""
    for col in ("norm_reference", "norm", "norm_lo", "norm_hi"):
        df[col] = "" if col == "norm_reference" else math.nan
    for _cls, sub in df.groupby("error_class"):
        if ref_label is not None:
            ref_rows = sub[sub["group"] == ref_label]
        else:
            ok = sub[(sub["events"].fillna(0) > 0) & (sub["fluence_n_cm2"] > 0)]
            ref_rows = ok.loc[[ok["sigma_cm2"].astype(float).idxmin()]] if len(ok) else ok
        if ref_rows.empty:
            why = "no group has events in this class" if ref_label is None else f"{ref_label} has no such row"
            for idx in sub.index:
                _add_note(df, idx, f"not normalised: {why}")
            continue
        ref = ref_rows.iloc[0]
        for idx, row in sub.iterrows():
            if row["group"] == ref["group"]:
                ratio, lo, hi, note = 1.0, 1.0, 1.0, ""  # the reference itself; its uncertainty is in the others
                if pd.isna(row["events"]) or float(row["fluence_n_cm2"]) <= 0:
                    ratio = lo = hi = math.nan
            else:
                ratio, lo, hi, note = _ratio(row, ref, confidence)
            df.loc[idx, ["norm", "norm_lo", "norm_hi"]] = [ratio, lo, hi]
            df.loc[idx, "norm_reference"] = ref["group"]
            _add_note(df, idx, note if note else "")
    return df


def fig7(df: pd.DataFrame, opts: FitOptions, notes: list[str]) -> pd.DataFrame:
    """Fig. 7 of the DieHardNet paper: in each panel (groups sharing ``fig7_per``, per board by default), the
    tolerable SDC, critical SDC and DUE rates of every group over the critical-SDC rate of the panel's reference
    group (``fig7_reference``, e.g. ``model=diehardnet``), with the exact interval of that ratio."""
    if df.empty or not _matching(df, opts.fig7_reference):
        if not df.empty and opts.fig7_reference != FIG7_REFERENCE:  # the default may not apply; a chosen one must
            notes.append(f"fig7_reference {opts.fig7_reference!r} matches no group: no Fig. 7 normalisation")
        return df  # no reference group anywhere: Fig. 7 does not apply, no empty columns
    df = df.copy()
    for col in ("fig7_reference", "fig7_norm", "fig7_norm_lo", "fig7_norm_hi"):
        df[col] = "" if col == "fig7_reference" else math.nan
    per = list(opts.fig7_per)
    panels = df.groupby(per, sort=True, dropna=False) if per else [((), df)]
    for panel, sub in panels:
        refs = _matching(sub, opts.fig7_reference)
        name = "/".join(str(x) for x in (panel if isinstance(panel, tuple) else (panel,))) or "all groups"
        if len(refs) != 1:
            if not refs:
                notes.append(f"Fig. 7 panel {name} (fig7_per = {per}): no group matches {opts.fig7_reference!r}: "
                             "not normalised")  # fmt: skip
                for idx in sub[sub["error_class"].isin(FIG7_CLASSES)].index:
                    _add_note(df, idx, f"Fig. 7: no {opts.fig7_reference} group in this panel")
            if len(refs) > 1:
                notes.append(f"Fig. 7 panel {name}: {len(refs)} groups match {opts.fig7_reference!r} "
                             f"({', '.join(refs)}): not normalised; add keys to fig7_reference")  # fmt: skip
            continue
        ref_rows = sub[(sub["group"] == refs[0]) & (sub["error_class"] == "sdc_critical")]
        if ref_rows.empty or pd.isna(ref_rows.iloc[0]["events"]):
            notes.append(
                f"Fig. 7 panel {name}: the reference {refs[0]} has no known critical-SDC count: not normalised"
            )
            for idx in sub[sub["error_class"].isin(FIG7_CLASSES)].index:
                _add_note(df, idx, "Fig. 7: the reference's critical-SDC count is unknown")
            continue
        ref = ref_rows.iloc[0]
        for idx, row in sub[sub["error_class"].isin(FIG7_CLASSES)].iterrows():
            if row["group"] == ref["group"] and row["error_class"] == "sdc_critical":
                vals = (1.0, 1.0, 1.0, "")
            else:
                vals = _ratio(row, ref, opts.confidence)
            df.loc[idx, ["fig7_norm", "fig7_norm_lo", "fig7_norm_hi"]] = list(vals[:3])
            df.loc[idx, "fig7_reference"] = f"{ref['group']} sdc_critical"
            _add_note(df, idx, vals[3] and f"Fig. 7 {vals[3]}")
    return df


# -- writing the results ---------------------------------------------------------------------------------------


def _ours(name: str) -> bool:
    stem, _, ext = name.partition(".")
    return name == "meta.json" or (stem in OUTPUTS and ext in ("csv", "parquet"))


def write_result(result: FitResult, out_dir: str | Path) -> list[Path]:
    """fit.csv (tidy, per group and class), runs.csv, events.csv, truth.csv, meta.json; Parquet when possible.

    The folder's outputs are replaced as a set (:func:`diehardlab.analysis.outputs.replace_folder`): a real
    campaign's results never sit beside an earlier simulated fit's truth.csv."""
    tables = {"fit": result.groups, "runs": result.runs, "events": result.events}
    if not result.truth.empty:
        tables["truth"] = result.truth
    try:
        import pyarrow  # noqa: F401

        parquet = True
    except ImportError:
        parquet = False

    def write(folder: Path) -> list[str]:
        names = []
        for name, df in tables.items():
            df = df.copy()
            df.insert(0, "simulated_beam", result.simulated)
            df.to_csv(folder / f"{name}.csv", index=False)
            names.append(f"{name}.csv")
            if parquet:
                df.to_parquet(folder / f"{name}.parquet", index=False)
                names.append(f"{name}.parquet")
        (folder / "meta.json").write_text(json.dumps(result.meta, indent=2, default=str) + "\n")
        names.append("meta.json")
        return names

    return replace_folder(Path(out_dir), write, "diehard fit", _ours)


def format_groups(df: pd.DataFrame, classes: Sequence[str] | None = None) -> str:
    if df.empty:
        return "(no groups)"
    w = min(90, max(10, *(len(str(x)) for x in df["group"])))
    lines = [f"{'group':<{w}} {'class':<14} {'events':>6} {'fluence n/cm2':>13} {'sigma cm2 [lo, hi]':>36} {'FIT':>10}"]
    for _, r in df.iterrows():
        if classes is not None and r["error_class"] not in classes:
            continue
        ev = "?" if pd.isna(r["events"]) else str(int(r["events"]))
        sig = "unknown" if pd.isna(r["events"]) else (
            f"{r['sigma_cm2']:>11.3e} [{r['sigma_lo_cm2']:.3e}, {r['sigma_hi_cm2']:.3e}]")  # fmt: skip
        fit_v = "" if pd.isna(r["fit"]) else f"{r['fit']:.4g}"
        extra = f"  (+{int(r['events_beam_off'])} without beam)" if r.get("events_beam_off", 0) else ""
        lines.append(
            f"{r['group'][:w]:<{w}} {r['error_class']:<14} {ev:>6} {r['fluence_n_cm2']:>13.4g} {sig:>36} "
            f"{fit_v:>10}{extra}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = make_parser("fit", "Cross sections and FIT per group, with exact (Garwood) Poisson intervals.")
    p.add_argument("--campaign", required=True, type=Path, help="campaign TOML file ([facility], [[dut]], [analysis])")
    p.add_argument("--logs", required=True, action="append", type=Path, help="folder of DUT/server logs (repeatable)")
    p.add_argument("--flux", action="append", type=Path, default=[],
                   help="facility count log (repeatable; all of them are one timeline)")  # fmt: skip
    p.add_argument("--out", type=Path, default=Path("fit-results"), help="output folder (default: fit-results)")
    p.add_argument("--fluence", choices=FLUENCE_METHODS, help="fluence definition (default: the campaign's)")
    p.add_argument("--group-by", help="comma-separated keys: " + ", ".join(GROUP_KEYS) + ", header.<key>")
    p.add_argument("--confidence", type=float, help="confidence level (default: the campaign's, 0.95)")
    p.add_argument("--one-sided", action="store_true", default=None, help="one-sided upper limits")
    p.add_argument("--reference", help="normalise to this group (label or key=value,...); default: lowest rate")
    p.add_argument("--legacy", action="store_true", default=None,
                   help="also the published bar 1.96 x value / sqrt(N) (ipdps2021 tables)")  # fmt: skip
    p.add_argument("--dut-timezone", help="clock zone of hosts the campaign does not list (IANA name)")
    p.add_argument("--wall-end", choices=WALL_END,
                   help="end of logs without a wall-clock end: start + kernel time (kernel, the default), or the "
                   "file's modification time when plausible (mtime: depends on how the files were copied)")  # fmt: skip
    p.add_argument("--flux-gap", type=float, help="bridge flux-log gaps up to this many seconds (default: 300)")
    p.add_argument("--journal", help="the campaign journal, for DUE recovery levels (default: the campaign's)")
    p.add_argument("--jobs", type=int, default=0, help="worker processes for parsing (default: one per core)")
    args = p.parse_args(argv)
    result = fit(
        args.campaign,
        args.logs,
        args.flux,
        fluence=args.fluence,
        group_by=[k.strip() for k in args.group_by.split(",") if k.strip()] if args.group_by else None,
        confidence=args.confidence,
        one_sided=args.one_sided,
        reference_group=args.reference,
        legacy=args.legacy,
        dut_timezone=args.dut_timezone,
        wall_end=args.wall_end,
        flux_gap_s=args.flux_gap,
        journal=args.journal,
        jobs=args.jobs,
    )
    for note in result.notes:
        print(note, file=sys.stderr)
    if result.simulated:
        print("NOTE: these results come from a SIMULATED beam (beam simulator), not a facility.")
    print(f"fluence: {result.options.fluence}; intervals: {result.options.ci_method}")
    print(format_groups(result.groups, ERROR_CLASSES))
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
