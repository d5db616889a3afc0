"""``diehard power FILE DUT on|off|cycle|state``: the DUT's outlet, through the campaign's switch driver."""

from __future__ import annotations

import math
from collections.abc import Sequence

from diehardlab.cli import make_parser


def main(argv: Sequence[str]) -> int:
    p = make_parser("power", "Switch a DUT's power outlet through its network power switch.")
    p.usage = (
        "diehard power FILE DUT {on,off,cycle,state} [--off-time S]\n       diehard power DUT ACTION --campaign FILE"
    )
    p.add_argument("args", nargs="+", metavar="ARG", help="FILE DUT ACTION, or DUT ACTION with --campaign")
    p.add_argument("--campaign", help="campaign file (instead of the first argument)")
    p.add_argument("--off-time", type=float, default=None, help="cycle: seconds off (default: escalation power_off_s)")
    a = p.parse_args(list(argv))
    args = ([a.campaign] if a.campaign else []) + a.args
    if len(args) != 3:
        p.error("give FILE DUT ACTION (or DUT ACTION --campaign FILE)")
    a.campaign, a.dut, a.action = args
    if a.action not in ("on", "off", "cycle", "state", "status"):
        p.error(f"action must be on, off, cycle or state (got {a.action!r})")
    if a.off_time is not None and not (math.isfinite(a.off_time) and 0 <= a.off_time <= 86400):
        p.error(f"--off-time must be a number of seconds from 0 to 86400 (got {a.off_time!r}); nothing was switched")
    from diehardlab.watchdog.server import escalation_of, make_transport
    from diehardlab.watchdog.switches import make_switch

    from diehardlab.campaign import load_campaign
    from diehardlab.config import read_secrets
    from diehardlab.errors import ConfigError

    c = load_campaign(a.campaign)
    d = c.dut(a.dut)
    if d.switch is None or d.outlet is None:
        raise ConfigError(f"DUT {d.name!r} has no switch/outlet in {a.campaign}")
    secrets = read_secrets(c.server.secrets_file) if c.server.secrets_file else None
    sw = make_switch(c.switch(d.switch), secrets, c.server.journal.parent)
    if a.action in ("state", "status"):
        print(f"{d.name}: switch {sw.name} outlet {d.outlet}: {'on' if sw.state(d.outlet) else 'off'}")
        return 0
    if a.action in ("off", "cycle") and d.transport == "local":
        # A simulated outlet powers local processes: switching it off must stop them, as real power would.
        make_transport(c, d).power_lost()
    if a.action == "on":
        sw.on(d.outlet)
    elif a.action == "off":
        sw.off(d.outlet)
    else:
        off = a.off_time if a.off_time is not None else escalation_of(c, d).power_off_s
        sw.cycle(d.outlet, off)
    print(f"{d.name}: switch {sw.name} outlet {d.outlet}: {'on' if sw.state(d.outlet) else 'off'}")
    return 0
