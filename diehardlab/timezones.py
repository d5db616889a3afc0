"""Time-zone lookups with errors that say what to write instead."""

from __future__ import annotations

from datetime import datetime, timezone, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from diehardlab.errors import ConfigError


def get_zone(name: str, where: str = "--tz") -> tzinfo:
    if name.upper() in ("UTC", "Z"):
        return timezone.utc
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ConfigError(
            f"{where}: unknown time zone {name!r}; use an IANA name such as 'Europe/London', 'America/Denver' or 'UTC'"
        ) from exc


def to_utc(naive: datetime | None, zone: tzinfo | None) -> datetime | None:
    """A naive wall-clock time read in ``zone``, as aware UTC; None when either is unknown."""
    if naive is None or zone is None:
        return None
    return naive.replace(tzinfo=zone).astimezone(timezone.utc)
