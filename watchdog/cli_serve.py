"""``diehard serve FILE [--duration S] [--check] [--dashboard ADDR]``."""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence

from diehardlab.cli import make_parser


def check_duration(p: argparse.ArgumentParser, duration: float | None) -> None:
    """``--duration`` of the commands that serve until SIGINT: a finite number of seconds > 0 (a NaN would never
    end the wait, nor start it)."""
    if duration is not None and not (math.isfinite(duration) and duration > 0):
        p.error(f"--duration must be a finite number of seconds > 0 (got {duration!r}); omit it to serve until SIGINT")


def main(argv: Sequence[str]) -> int:
    p = make_parser("serve", "Run the campaign server (software and hardware watchdogs) for a campaign file.")
    p.add_argument("campaign", help="campaign file (TOML), e.g. setups/campaigns/local-demo.toml")
    p.add_argument("--duration", type=float, default=None, help="stop after this many seconds (default: until SIGINT)")
    p.add_argument("--check", action="store_true", help="validate the file and print the plan; start nothing")
    p.add_argument(
        "--reset", action="append", default=[], metavar="DUT",
        help="start this DUT's escalation afresh (a broken board that was repaired); repeatable",
    )  # fmt: skip
    p.add_argument(
        "--dashboard", metavar="ADDR",
        help="also serve the live, read-only dashboard on HOST:PORT (e.g. 127.0.0.1:8080; a non-loopback address "
        "needs [dashboard] token_secret)",
    )  # fmt: skip
    a = p.parse_args(list(argv))
    from diehardlab.watchdog.server import plan, problems, serve

    from diehardlab.campaign import load_campaign

    if a.check:
        c = load_campaign(a.campaign)
        print(plan(c, a.campaign))
        found = problems(c)
        for msg in found:
            print(f"  to fix before serving: {msg}")
        print("the file is valid" + (f"; {len(found)} thing(s) to fix on this machine" if found else ""))
        return 0
    check_duration(p, a.duration)
    return serve(a.campaign, a.duration, a.reset, a.dashboard)
