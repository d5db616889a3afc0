"""The analysis of a campaign while it runs, for the live dashboard (``python -m diehardlab.analysis.live``).

A worker process: it reads one JSON request per line on stdin and answers one JSON line on stdout, until
stdin closes. A request names the campaign file, the log folders, the facility logs and the target relative
width; the answer holds, per group and error class, what ``diehard fit`` computes on those files
(:func:`diehardlab.analysis.fit.fit`) and what :mod:`diehardlab.analysis.planning` adds (width now, events and
beam time still needed), the analysis' notes, and each facility log's state (last row, flux now, the last
two hours of flux for the page's plot).

Why a separate process: the campaign server never imports pandas or scipy (a beam-room server may not even
have them), and a fit over days of logs must not hold the server's event loop or its interpreter lock. The
worker lowers its own priority (nice 10), so the watchdogs keep the CPU when both want it.

A run still in progress has no closing line yet, and ``diehard fit`` reads a log without one as a DUE of
unknown cause ("no #END"): the request names the logs the server still writes (``in_progress``), and for
those runs, and only while their DUE cause is "no #END", the worker counts no DUE (the answer lists them).
Everything else is ``diehard fit``'s own numbers, regrouped by its own :func:`~diehardlab.analysis.fit.group_table`.

Request:  {"campaign": PATH, "logs": [DIR, ...], "flux": [FILE, ...], "target": 0.2, "in_progress": [NAME, ...]}
Answer:   {"ok": true, "rows": [...], "notes": [...], "facility": [...], "command": "diehard fit ...", ...}
          {"ok": false, "error": "one line"}
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shlex
import sys
import time
import traceback
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from diehardlab.campaign import CampaignFile, load_campaign
from diehardlab.errors import DataError, DiehardError
from diehardlab.timezones import get_zone

MAX_NOTES = 30
SERIES_WINDOW_S = 7200.0
SERIES_POINTS = 240


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def facility_status(campaign: CampaignFile, path: Path) -> dict[str, Any]:
    """What the page shows of one facility log: its last row, the flux now (at the reference position),
    whether the beam is on, and the flux over the last two hours of the log."""
    import numpy as np
    from diehardlab.analysis.flux import factor_schedule, read_flux_log

    fac = campaign.facility
    zone = get_zone(fac.timezone) if fac else timezone.utc
    fl = read_flux_log(path, zone)
    dated = []
    if fac is not None:
        fzone = get_zone(fac.timezone)
        dated = [(ff.since.replace(tzinfo=fzone).timestamp(), ff.value) for ff in fac.flux_factors]
    factor = factor_schedule(fac.flux_factor if fac else None, dated)
    dt = np.diff(fl.t)
    dc = np.clip(np.diff(fl.counts), 0, None)
    flux = dc / dt * factor(fl.t[:-1])
    positive = flux[flux > 0]
    typical = float(np.median(positive)) if positive.size else 0.0
    off_fraction = campaign.analysis.beam_off_fraction
    now = float(flux[-1]) if flux.size else math.nan
    recent = fl.t[1:] >= fl.end - SERIES_WINDOW_S
    ts, fs = fl.t[1:][recent], flux[recent]
    step = max(1, math.ceil(len(ts) / SERIES_POINTS))
    return {
        "path": str(path),
        "kind": fl.kind,
        "rows": len(fl.t),
        "first_utc": _iso(fl.start),
        "last_utc": _iso(fl.end),
        "last_t": fl.end,
        "flux_now_n_cm2_s": now,
        "beam_on_now": bool(now > off_fraction * typical) if typical > 0 else False,
        "malformed_rows": len(fl.malformed),
        "series": [[round(float(t), 1), float(f)] for t, f in zip(ts[::step], fs[::step])],
    }


def fit_command(campaign: str, logs: list[str], flux: list[str]) -> str:
    """The ``diehard fit`` line that computes the same numbers from the same files."""
    argv = ["diehard", "fit", "--campaign", campaign]
    for d in logs:
        argv += ["--logs", d]
    for f in flux:
        argv += ["--flux", f]
    return shlex.join([*argv, "--out", "fit-results"])


def answer(req: dict[str, Any]) -> dict[str, Any]:
    from diehardlab.analysis import planning
    from diehardlab.analysis.fit import fit

    t0 = time.monotonic()
    path = str(req["campaign"])
    campaign = load_campaign(path)
    logs = [str(d) for d in req.get("logs") or []]
    flux = [str(f) for f in req.get("flux") or []]
    target = float(req.get("target", campaign.dashboard.target_relative_width))
    facility_files = [Path(f) for f in flux] or (list(campaign.facility.flux_logs) if campaign.facility else [])
    facility = []
    for f in facility_files:
        try:
            facility.append(facility_status(campaign, f))
        except DiehardError as exc:
            facility.append({"path": str(f), "error": str(exc)})
    out: dict[str, Any] = {"ok": True, "facility": facility, "command": fit_command(path, logs, flux)}
    if not logs:
        raise DataError("no log folder exists yet: the first run of the campaign creates it")
    # jobs=1: the worker parses in its own process only, never a pool that would take every core.
    result = fit(campaign, logs, flux, jobs=1)
    result, running = _in_progress(result, set(req.get("in_progress") or []))
    runs = result.runs
    excluded = runs[runs["excluded"].astype(bool)] if len(runs) else runs
    out.update(
        rows=planning.progress(result, target),
        confidence=result.options.confidence,
        one_sided=result.options.one_sided,
        ci_method=result.options.ci_method,
        fluence_method=result.options.fluence,
        group_by=list(result.options.group_by),
        simulated=bool(result.simulated),
        target_relative_width=target,
        runs=len(runs),
        runs_excluded=len(excluded),
        excluded=[
            {"name": str(r["name"]), "reason": str(r["exclude_reason"])} for _, r in excluded.head(10).iterrows()
        ],
        in_progress=running,
        notes=result.notes[:MAX_NOTES],
        notes_total=len(result.notes),
        took_s=round(time.monotonic() - t0, 3),
    )
    return out


def _in_progress(result: Any, names: set[str]) -> tuple[Any, list[str]]:
    """The runs the server still writes are not DUEs (yet): their "no #END" DUE is taken back."""
    from diehardlab.analysis.fit import group_table

    runs = result.runs
    if not names or not len(runs):
        return result, []
    mask = runs["name"].isin(names) & (runs["due_cause"] == "no #END")
    if not mask.any():
        return result, []
    runs = runs.copy()
    runs.loc[mask, ["due", "due_class", "due_cause"]] = [0, "", ""]
    return replace(result, runs=runs, groups=group_table(runs, result.options)), sorted(runs.loc[mask, "name"])


def json_safe(v: Any) -> Any:
    """NaN and infinities are not JSON: they become null (the page says 'unknown')."""
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {str(k): json_safe(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [json_safe(x) for x in v]
    if hasattr(v, "item"):  # numpy scalars
        return json_safe(v.item())
    return v


def missing_extra() -> str:
    """Why this machine cannot compute cross sections ('' when it can): the server extra alone lacks them."""
    for name in ("numpy", "pandas", "scipy"):
        try:
            __import__(name)
        except ImportError:
            return (
                f"cross sections need the 'analysis' extra on this machine (the Python package {name!r} is "
                "missing): pip install 'diehardlab[analysis]'"
            )
    return ""


def main() -> int:
    with contextlib.suppress(OSError):
        os.nice(10)  # the watchdogs first
    missing = missing_extra()
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            req = json.loads(line)
            if not isinstance(req, dict) or "campaign" not in req:
                raise DiehardError("a request is a JSON object with 'campaign', 'logs', 'flux', 'target'")
            if missing:
                raise DiehardError(missing)
            out = answer(req)
        except (DiehardError, ValueError) as exc:
            out = {"ok": False, "error": " ".join(str(exc).split())[:500]}
        except Exception as exc:  # the worker survives anything a half-written file can do to the analysis
            traceback.print_exc(file=sys.stderr)
            out = {"ok": False, "error": f"{type(exc).__name__}: {' '.join(str(exc).split())[:400]}"}
        sys.stdout.write(json.dumps(json_safe(out), allow_nan=False) + "\n")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
