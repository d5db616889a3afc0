"""Aviosys IP Power 9258 family (IP9258, 9258-S/T/W and the OEM units sold under other names).

Switching follows the web form of the device and the reference radiation-setup server (FORMATS.md 7):
``POST /tgi/iocontrol.tgi`` with the form field ``P6<outlet-1>=On`` or ``Off`` and ``Apply=Apply``.
The state is read with the device's CGI command interface, ``GET /set.cmd?cmd=getpower`` (HTTP Basic
authentication), which answers e.g. ``<html>p61=1,p62=0,p63=0,p64=1</html>``; firmware that numbers the
outlets from ``p60`` is recognised by the presence of ``p60``.
"""

from __future__ import annotations

import re

from diehardlab.watchdog.switches.base import Driver, SwitchError
from diehardlab.watchdog.switches.http import HttpClient

_FIELD = re.compile(r"p6(\d)\s*=\s*([01])", re.IGNORECASE)


def parse_getpower(text: str) -> dict[int, bool]:
    """Outlet number (from 1) -> on, from a ``getpower`` answer in either numbering."""
    fields = {int(k): v == "1" for k, v in _FIELD.findall(text)}
    shift = 1 if 0 in fields else 0
    return {k + shift: v for k, v in fields.items()}


class IpPower9258(Driver):
    device = "IP Power 9258"

    def __init__(self, name: str, url: str, user: str, password: str, **kw):
        super().__init__(name, **kw)
        self.http = HttpClient(name, url, self.timeout_s, auth=(user, password))

    def _set(self, outlet: int, on: bool) -> None:
        form = {f"P6{outlet - 1}": "On" if on else "Off", "Apply": "Apply"}
        self.http.request("POST", "/tgi/iocontrol.tgi", data=form)

    def _get(self, outlet: int) -> bool:
        states = parse_getpower(self.http.request("GET", "/set.cmd?cmd=getpower").text)
        if outlet not in states:
            raise SwitchError(f"switch {self.name!r}: getpower reports no outlet {outlet}")
        return states[outlet]
