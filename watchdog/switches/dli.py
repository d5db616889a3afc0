"""Digital Loggers Web Power Switch: the REST API (firmware 1.7 and later: Pro, EPCR, LPC9), and the legacy
web interface of older units (:class:`DliLegacy`).

REST:

``PUT /restapi/relay/outlets/=<n-1>/state/`` with the form ``value=true|false`` switches outlet n (the ``=``
selects by index), ``GET /restapi/relay/outlets/<n-1>/state/`` answers ``true`` or ``false`` (JSON).
HTTP digest authentication; the ``X-CSRF: x`` header that the API requires of non-browser clients.
"""

from __future__ import annotations

import re

from diehardlab.watchdog.switches.base import Driver, SwitchError
from diehardlab.watchdog.switches.http import HttpClient
from requests.auth import HTTPDigestAuth


class DliRest(Driver):
    device = "Digital Loggers REST"

    def __init__(self, name: str, url: str, user: str, password: str, **kw):
        super().__init__(name, **kw)
        self.http = HttpClient(
            name, url, self.timeout_s, auth=HTTPDigestAuth(user, password),
            headers={"X-CSRF": "x", "Accept": "application/json"},
        )  # fmt: skip

    def _set(self, outlet: int, on: bool) -> None:
        self.http.request(
            "PUT", f"/restapi/relay/outlets/={outlet - 1}/state/", data={"value": "true" if on else "false"}
        )

    def _get(self, outlet: int) -> bool:
        r = self.http.request("GET", f"/restapi/relay/outlets/{outlet - 1}/state/")
        try:
            value = r.json()
        except ValueError as exc:
            raise SwitchError(f"switch {self.name!r}: outlet state is not JSON: {r.text[:60]!r}") from exc
        if not isinstance(value, bool):
            raise SwitchError(f"switch {self.name!r}: outlet state {value!r} is not true/false")
        return value


_STATE = re.compile(r'<div id="state">([0-9a-fA-F]+)</div>')


class DliLegacy(Driver):
    """Digital Loggers Web Power Switch, legacy web interface (Web Power Switch 7 and older LPCs with "Allow
    legacy state-changing GET requests" set): ``GET /outlet?<n>=ON|OFF`` switches, ``GET /status`` answers a
    page holding ``<div id="state">XX</div>``, a hex bit mask of the outlets that are on (bit n-1 = outlet n).
    HTTP Basic authentication."""

    device = "Digital Loggers legacy web"

    def __init__(self, name: str, url: str, user: str, password: str, **kw):
        super().__init__(name, **kw)
        self.http = HttpClient(name, url, self.timeout_s, auth=(user, password))

    def _set(self, outlet: int, on: bool) -> None:
        self.http.request("GET", f"/outlet?{outlet}={'ON' if on else 'OFF'}")

    def _get(self, outlet: int) -> bool:
        m = _STATE.search(self.http.request("GET", "/status").text)
        if not m:
            raise SwitchError(f"switch {self.name!r}: /status has no outlet state (legacy API disabled?)")
        return bool(int(m.group(1), 16) >> (outlet - 1) & 1)
