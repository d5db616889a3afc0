"""Lindy IPower (the switch used at ChipIR; the same firmware ships as several 8/16/24-outlet PDUs).

Protocol of its web interface (FORMATS.md section 7, and what the reference radiation-setup server sends):
``POST /ons.cgi?led=<24 characters>`` switches on the outlets whose character is ``1`` (outlet n is
character n-1), ``POST /offs.cgi?led=...`` switches them off, with Basic authentication and the
``Referer: http://<ip>/outlet.htm`` the firmware checks. The state is read with ``POST /status.xml``:
its ``<pot0>`` element holds comma-separated fields, the outlet states (``1``/``0``) from field 10 on.
"""

from __future__ import annotations

import re

from diehardlab.watchdog.switches.base import Driver, SwitchError
from diehardlab.watchdog.switches.http import HttpClient

LED_CHARS = 24
_POT0 = re.compile(r"<pot0>([^<]*)</pot0>")


def led_mask(outlet: int) -> str:
    return "".join("1" if i == outlet - 1 else "0" for i in range(LED_CHARS))


class LindyIPower(Driver):
    device = "Lindy IPower"

    def __init__(self, name: str, url: str, user: str, password: str, host_header: str, **kw):
        super().__init__(name, **kw)
        self.http = HttpClient(
            name, url, self.timeout_s, auth=(user, password), headers={"Referer": f"http://{host_header}/outlet.htm"}
        )

    def _set(self, outlet: int, on: bool) -> None:
        self.http.request("POST", f"/{'ons' if on else 'offs'}.cgi?led={led_mask(outlet)}")

    def _get(self, outlet: int) -> bool:
        text = self.http.request("POST", "/status.xml").text
        m = _POT0.search(text)
        fields = m.group(1).split(",") if m else []
        if len(fields) < 10 + outlet:
            raise SwitchError(f"switch {self.name!r}: /status.xml has no state for outlet {outlet}")
        return fields[9 + outlet].strip() == "1"
