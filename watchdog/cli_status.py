"""``diehard status FILE``: a table per DUT from the running server's status file, or from the journal."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timezone

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


def main(argv: Sequence[str]) -> int:
    p = make_parser("status", "Show the state of every DUT of a campaign.")
    p.add_argument("campaign", help="campaign file (TOML)")
    p.add_argument("--json", action="store_true", help="print the status document as JSON")
    a = p.parse_args(list(argv))
    from diehardlab.watchdog.journal import last_snapshots, read_journal
    from diehardlab.watchdog.server import status_path

    from diehardlab.campaign import load_campaign

    c = load_campaign(a.campaign)
    path = status_path(c)
    if path.exists():
        doc = json.loads(path.read_text())
        source = f"status of the server at {doc['time']} ({path})"
    else:
        snaps = last_snapshots(read_journal(c.server.journal))
        doc = {"time": "", "duts": {}, "rejected": {}}
        for d in c.duts:
            s = snaps.get(d.name, {})
            bench = d.benchmarks[int(s.get("bench", 0)) % len(d.benchmarks)].name
            doc["duts"][d.name] = {**s, "benchmark": bench, "heartbeat_age_s": None}
        source = f"from the journal {c.server.journal} (no server status file)"
    if a.json:
        print(json.dumps(doc, indent=1))
        return 0
    rows = [COLUMNS]
    for d in c.duts:
        s = doc["duts"].get(d.name, {})
        rows.append(
            (
                d.name,
                s.get("state", "off"),
                s.get("benchmark", d.benchmarks[0].name),
                _age(doc.get("time", ""), s.get("heartbeat_age_s")) if doc.get("time") else "-",
                str(s.get("sdc", 0)),
                str(s.get("due", 0)),
                str(s.get("total_app_restarts", 0)),
                str(s.get("total_os_reboots", 0)),
                str(s.get("total_power_cycles", 0)),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    print(f"campaign {c.campaign.name}: {source}")
    for r in rows:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip())
    if doc.get("rejected"):
        print("rejected datagrams: " + ", ".join(f"{k} {v}" for k, v in sorted(doc["rejected"].items())))
    return 0
