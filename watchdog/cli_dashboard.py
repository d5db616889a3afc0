"""``diehard dashboard FILE [--bind ADDR] [--logs DIR] [--flux FILE]``: the live page from a campaign's files.

Beside a running ``diehard serve`` (started without ``--dashboard``), or after a campaign: it reads the
server's journal and status file and the logs, never writes anything, and needs no access to the DUTs.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from diehardlab.watchdog.cli_serve import check_duration

from diehardlab.cli import make_parser


def main(argv: Sequence[str]) -> int:
    p = make_parser(
        "dashboard",
        "Serve the live, read-only campaign dashboard from the files a campaign server writes: each DUT's state, "
        "escalation step, datagram age, iterations/s, SDC and DUE, the watchdog's timeline; per configuration "
        "the fluence, events, cross section with its Garwood interval, and the beam time still needed to reach "
        "[dashboard] target_relative_width. (For the server's live state use 'diehard serve FILE --dashboard "
        "ADDR'.)",
    )
    p.add_argument("campaign", help="campaign file (TOML)")
    p.add_argument("--bind", default="127.0.0.1:8080", metavar="ADDR",
                   help="HOST:PORT to serve on (default 127.0.0.1:8080; a non-loopback address needs "
                   "[dashboard] token_secret)")  # fmt: skip
    p.add_argument("--logs", action="append", type=Path, default=[], metavar="DIR",
                   help="folder of logs for the cross sections (repeatable; default: the server's log_dir and "
                   "local DUTs' folders)")  # fmt: skip
    p.add_argument("--flux", action="append", type=Path, default=[], metavar="FILE",
                   help="facility count log (repeatable; default: the campaign's [facility] flux_logs)")  # fmt: skip
    p.add_argument("--duration", type=float, default=None, help="stop after this many seconds (default: until SIGINT)")
    a = p.parse_args(list(argv))
    check_duration(p, a.duration)
    from diehardlab.watchdog.dashboard.service import serve_dashboard
    from diehardlab.watchdog.server import log_folders, status_path

    from diehardlab.campaign import load_campaign
    from diehardlab.errors import ConfigError

    c = load_campaign(a.campaign)
    for d in a.logs:
        if not d.is_dir():
            raise ConfigError(f"--logs {d}: no such folder")
    for f in a.flux:
        if not f.is_file():
            raise ConfigError(f"--flux {f}: no such file")
    logs = [d.resolve() for d in a.logs] or log_folders(c)
    return serve_dashboard(c, a.campaign, a.bind, logs, status_path(c), [f.resolve() for f in a.flux], a.duration)
