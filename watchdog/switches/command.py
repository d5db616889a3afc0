"""An external command as a switch (a vendor CLI, ipmitool, a USB relay tool): argv lists from the campaign.

``{outlet}`` in an argument is replaced by the outlet number. ``state_command`` prints ``on`` or ``off``
(also accepted: 1/0, true/false); without it the driver cannot read back and trusts the exit status.
"""

from __future__ import annotations

import subprocess

from diehardlab.watchdog.switches.base import Driver, SwitchError


class CommandSwitch(Driver):
    device = "external command"

    def __init__(self, name: str, on_command: list[str], off_command: list[str], state_command: list[str] | None, **kw):
        super().__init__(name, **kw)
        self.on_command, self.off_command, self.state_command = on_command, off_command, state_command
        self._last: dict[int, bool] = {}

    def _run(self, argv: list[str], outlet: int) -> str:
        argv = [a.replace("{outlet}", str(outlet)) for a in argv]
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=self.timeout_s, check=False)
        except subprocess.TimeoutExpired as exc:
            raise SwitchError(f"switch {self.name!r}: {argv[0]} did not finish within {self.timeout_s:g} s") from exc
        except OSError as exc:
            raise SwitchError(f"switch {self.name!r}: cannot run {argv[0]}: {exc}") from exc
        if r.returncode != 0:
            raise SwitchError(f"switch {self.name!r}: {argv[0]} exited {r.returncode}: {r.stderr.strip()[:200]}")
        return r.stdout

    def _set(self, outlet: int, on: bool) -> None:
        self._run(self.on_command if on else self.off_command, outlet)
        self._last[outlet] = on

    def _get(self, outlet: int) -> bool:
        if self.state_command is None:
            if outlet not in self._last:
                raise SwitchError(f"switch {self.name!r}: no state_command, so the state of outlet {outlet} is unknown")
            return self._last[outlet]
        out = self._run(self.state_command, outlet).strip().lower()
        if out in ("on", "1", "true"):
            return True
        if out in ("off", "0", "false"):
            return False
        raise SwitchError(f"switch {self.name!r}: state_command printed {out[:40]!r}, not on/off")
