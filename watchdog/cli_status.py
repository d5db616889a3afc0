"""``diehard status FILE``: a table per DUT from the running server's status file, or from the journal.

Whether a server runs is read from the campaign's lock (held by a live server only, whatever its PID file or
status file say); a stopped server's last status file is shown as such.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from diehardlab.cli import make_parser

COLUMNS = ("dut", "state", "benchmark", "heartbeat", "sdc", "due", "restarts", "reboots", "power cycles")


def _age(doc_time: str, age: float | None) -> str:
    if age is None:
        return "never"
    try:
        then = datetime.fromisoformat(doc_time.replace("Z", "+00:00"))
        age += (datetime.now(timezone.utc) - then).total_seconds()
    except ValueError:
        pass
    return f"{age:.0f} s ago"


def read_status(path: Path) -> dict[str, Any]:
    """The server's status document, or a DataError naming the file and what to do."""
    from diehardlab.errors import DataError

    fix = "the running server rewrites it every status_interval_s; with no server running, delete it"
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read the status file ({exc.strerror or exc}); {fix}") from exc
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        what = "empty" if not data.strip() else f"not JSON ({exc})"[:120]
        raise DataError(f"{path}: the status file is {what}; {fix}") from exc
    if not (
        isinstance(doc, dict)
        and isinstance(doc.get("time"), str)
        and isinstance(doc.get("duts"), dict)
        and all(isinstance(v, dict) for v in doc["duts"].values())
    ):
        raise DataError(f"{path}: not a diehard status document (needs 'time' and 'duts' per DUT); {fix}")
    return doc


def main(argv: Sequence[str]) -> int:
    p = make_parser("status", "Show the state of every DUT of a campaign.")
    p.add_argument("campaign", help="campaign file (TOML)")
    p.add_argument("--json", action="store_true", help="print the status document as JSON")
    a = p.parse_args(list(argv))
    from diehardlab.watchdog.journal import last_snapshots, read_journal
    from diehardlab.watchdog.lock import describe, holder, lock_path
    from diehardlab.watchdog.server import status_path

    from diehardlab.campaign import load_campaign

    c = load_campaign(a.campaign)
    path = status_path(c)
    running = holder(lock_path(c.server.journal))
    if path.exists() or path.is_symlink():
        doc = read_status(path)
        if running is not None:
            source = f"server running ({describe(running).removeprefix('the server with ')}); status at {doc['time']}"
        else:
            source = f"server stopped; its last status, at {doc['time']}"
        source += f" ({path})"
    else:
        records = read_journal(c.server.journal)
        snaps = last_snapshots(records)
        doc = {"time": "", "duts": {}, "rejected": {}}
        for d in c.duts:
            s = snaps.get(d.name, {})
            bench = d.benchmarks[int(s.get("bench", 0) or 0) % len(d.benchmarks)].name
            doc["duts"][d.name] = {**s, "benchmark": bench, "heartbeat_age_s": None}
        state = "running, no status file yet" if running is not None else ("stopped" if records else "never started")
        source = f"server {state}; from the journal {c.server.journal}"
    doc["server"] = "running" if running is not None else "stopped"
    if a.json:
        print(json.dumps(doc, indent=1))
        return 0
    rows = [COLUMNS]
    errors = []
    for d in c.duts:
        s = doc["duts"].get(d.name, {})
        rows.append(
            (
                d.name,
                str(s.get("state", "off")),
                str(s.get("benchmark", d.benchmarks[0].name)),
                _age(doc.get("time", ""), s.get("heartbeat_age_s")) if doc.get("time") else "-",
                str(s.get("sdc", 0)),
                str(s.get("due", 0)),
                str(s.get("total_app_restarts", 0)),
                str(s.get("total_os_reboots", 0)),
                str(s.get("total_power_cycles", 0)),
            )
        )
        if s.get("last_error"):
            errors.append(f"{d.name}: last error: {s['last_error']}")
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    print(f"campaign {c.campaign.name}: {source}")
    for r in rows:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip())
    for line in errors:
        print(line)
    if isinstance(doc.get("storage"), dict):
        print(f"writes failing since {doc['storage'].get('since')}: {doc['storage'].get('first_error')}")
    if isinstance(doc.get("rejected"), dict) and doc["rejected"]:
        print("rejected datagrams: " + ", ".join(f"{k} {v}" for k, v in sorted(doc["rejected"].items())))
    return 0
