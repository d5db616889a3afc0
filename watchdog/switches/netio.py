"""NETIO PowerPDU / PowerCable with the JSON M2M API (NETIO "JSON API" protocol description, v2.x).

``GET /netio.json`` returns ``{"Agent": {...}, "Outputs": [{"ID": n, "Name": .., "State": 0|1, "Action": ..}]}``;
``POST /netio.json`` with ``{"Outputs": [{"ID": n, "Action": a}]}`` switches, a = 0 off, 1 on, 2 short off,
3 short on, 4 toggle, 5 no change. HTTP Basic authentication with the M2M API's read/write account.
Plain ``requests`` rather than the ``Netio`` package: it is a few lines, and it keeps our timeout and errors.
"""

from __future__ import annotations

from diehardlab.watchdog.switches.base import Driver, SwitchError
from diehardlab.watchdog.switches.http import HttpClient


class Netio(Driver):
    device = "NETIO JSON API"

    def __init__(self, name: str, url: str, user: str, password: str, **kw):
        super().__init__(name, **kw)
        self.http = HttpClient(name, url, self.timeout_s, auth=(user, password) if user else None)

    def _set(self, outlet: int, on: bool) -> None:
        self.http.request("POST", "/netio.json", json={"Outputs": [{"ID": outlet, "Action": 1 if on else 0}]})

    def _get(self, outlet: int) -> bool:
        try:
            outputs = self.http.request("GET", "/netio.json").json()["Outputs"]
        except (ValueError, KeyError, TypeError) as exc:
            raise SwitchError(f"switch {self.name!r}: /netio.json is not a NETIO JSON document") from exc
        for o in outputs:
            if o.get("ID") == outlet:
                return int(o.get("State", 0)) == 1
        raise SwitchError(f"switch {self.name!r}: /netio.json lists no output {outlet}")
