"""One small protocol for every network power switch: on, off, state, and cycle with an off time.

Drivers implement ``_set(outlet, on)`` and ``_get(outlet)``; this base adds what every field switch needs:
a read-back after each change, polled for ``settle_s`` because many switches report their new state late,
and an error (never a hang) when the switch does not answer within its timeout. Calls are blocking; the
server runs them in worker threads so a dead switch never stalls a watchdog.
"""

from __future__ import annotations

import math
import time
from typing import Protocol

from diehardlab.errors import DiehardError


class SwitchError(DiehardError):
    """The switch did not answer, refused the request, or did not reach the requested state."""


class PowerSwitch(Protocol):
    name: str

    def on(self, outlet: int) -> None: ...

    def off(self, outlet: int) -> None: ...

    def state(self, outlet: int) -> bool: ...

    def cycle(self, outlet: int, off_s: float) -> None: ...


class Driver:
    """Base of the drivers: read-back with settle time, and cycle built from off and on."""

    device = "abstract"

    def __init__(self, name: str, outlets: int = 8, timeout_s: float = 5.0, settle_s: float = 2.0, poll_s: float = 0.2):
        self.name = name
        self.outlets = outlets
        self.timeout_s = timeout_s
        self.settle_s = settle_s
        self.poll_s = poll_s

    # -- what a driver implements -----------------------------------------------------------------------

    def _set(self, outlet: int, on: bool) -> None:
        raise NotImplementedError

    def _get(self, outlet: int) -> bool:
        raise NotImplementedError

    # -- the protocol -------------------------------------------------------------------------------------

    def _check(self, outlet: int) -> None:
        if not 1 <= outlet <= self.outlets:
            raise SwitchError(f"switch {self.name!r}: outlet {outlet} is not in 1..{self.outlets}")

    def state(self, outlet: int) -> bool:
        self._check(outlet)
        return self._get(outlet)

    def set(self, outlet: int, on: bool) -> None:
        """Switch and read back until the switch reports the new state (or ``settle_s`` passes)."""
        self._check(outlet)
        self._set(outlet, on)
        deadline = time.monotonic() + self.settle_s
        while True:
            if self._get(outlet) == on:
                return
            if time.monotonic() >= deadline:
                raise SwitchError(
                    f"switch {self.name!r} outlet {outlet}: still reports {'off' if on else 'on'} "
                    f"{self.settle_s:g} s after switching it {'on' if on else 'off'}"
                )
            time.sleep(self.poll_s)

    def on(self, outlet: int) -> None:
        self.set(outlet, True)

    def off(self, outlet: int) -> None:
        self.set(outlet, False)

    def cycle(self, outlet: int, off_s: float) -> None:
        # checked before switching: an outlet left off by a bad number is a board that stays down
        if not (math.isfinite(off_s) and off_s >= 0):
            raise SwitchError(f"switch {self.name!r}: off time {off_s!r} s must be a finite number >= 0")
        self._check(outlet)
        self.off(outlet)
        time.sleep(off_s)
        self.on(outlet)
