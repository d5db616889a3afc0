"""A simulated switch for the local transport and the demo: outlet states in a JSON file (or in memory).

Switching it changes nothing physical; the server pairs it with the local transport, whose "power off"
kills the DUT's process group. The file lets ``diehard power`` and a running server see the same state.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from diehardlab.watchdog.switches.base import Driver


class SimulatedSwitch(Driver):
    device = "simulated switch"

    def __init__(self, name: str, state_file: Path | None = None, **kw):
        kw.setdefault("settle_s", 0.0)
        super().__init__(name, **kw)
        self.state_file = state_file
        self._mem: dict[str, bool] = {}

    def _load(self) -> dict[str, bool]:
        if self.state_file is None:
            return self._mem
        try:
            return {k: bool(v) for k, v in json.loads(self.state_file.read_text()).items()}
        except (FileNotFoundError, ValueError):
            return {}

    def _set(self, outlet: int, on: bool) -> None:
        states = self._load()
        states[str(outlet)] = on
        if self.state_file is None:
            self._mem = states
            return
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(states))
        os.replace(tmp, self.state_file)

    def _get(self, outlet: int) -> bool:
        return self._load().get(str(outlet), True)  # outlets start powered, as a PDU's default
