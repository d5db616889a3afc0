"""Power-switch drivers behind one protocol (:class:`~diehardlab.watchdog.switches.base.PowerSwitch`).

One module per device, each naming the device and the documentation it follows. :func:`make_switch`
builds the driver a campaign's ``[[switch]]`` table asks for, reading its password from the environment
variable or the secrets file it names (never from the campaign file).
"""

from __future__ import annotations

from pathlib import Path

from diehardlab.watchdog.switches.base import Driver, PowerSwitch, SwitchError

from diehardlab.campaign import Switch
from diehardlab.config import env_secret
from diehardlab.errors import ConfigError

__all__ = ["Driver", "PowerSwitch", "SwitchError", "make_switch"]


def _password(cfg: Switch, secrets: dict[str, str] | None) -> str:
    if cfg.password_env:
        return env_secret(cfg.password_env, f"switch {cfg.name!r} password_env")
    if cfg.secret:
        if secrets is None or cfg.secret not in secrets:
            raise ConfigError(
                f"switch {cfg.name!r}: secret {cfg.secret!r} is not in the secrets file ([server] secrets_file)"
            )
        return secrets[cfg.secret]
    return ""


def make_switch(cfg: Switch, secrets: dict[str, str] | None = None, state_dir: Path | None = None) -> Driver:
    common = {"outlets": cfg.outlets, "timeout_s": cfg.timeout_s, "settle_s": cfg.settle_s}
    if cfg.model == "simulated":
        state_file = cfg.state_file or (state_dir / f"simulated-switch-{cfg.name}.json" if state_dir else None)
        from diehardlab.watchdog.switches.simulated import SimulatedSwitch

        return SimulatedSwitch(cfg.name, state_file, outlets=cfg.outlets, timeout_s=cfg.timeout_s)
    if cfg.model == "command":
        from diehardlab.watchdog.switches.command import CommandSwitch

        return CommandSwitch(cfg.name, cfg.on_command or [], cfg.off_command or [], cfg.state_command, **common)
    if cfg.model == "snmp":
        from diehardlab.watchdog.switches.snmp import SnmpPdu

        if not cfg.snmp_oid:
            raise ConfigError(f"switch {cfg.name!r}: an SNMP switch needs 'snmp_oid' (the outlet-control OID prefix)")
        if cfg.community_env:
            community = env_secret(cfg.community_env, f"switch {cfg.name!r} community_env")
        else:
            community = _password(cfg, secrets)
        if not community:
            raise ConfigError(f"switch {cfg.name!r}: give the SNMP community with community_env or secret")
        return SnmpPdu(
            cfg.name, cfg.host, cfg.port or 161, community, cfg.snmp_oid, cfg.snmp_on, cfg.snmp_off, **common
        )
    from diehardlab.watchdog.switches.http import base_url

    url = base_url(cfg.host, cfg.port)
    if cfg.model == "lindy-ipower":
        from diehardlab.watchdog.switches.lindy import LindyIPower

        host_header = cfg.host if cfg.port is None else f"{cfg.host}:{cfg.port}"
        return LindyIPower(cfg.name, url, cfg.user or "snmp", _password(cfg, secrets), host_header, **common)
    if cfg.model == "netio":
        from diehardlab.watchdog.switches.netio import Netio

        return Netio(cfg.name, url, cfg.user, _password(cfg, secrets), **common)
    if cfg.model == "ip9258":
        from diehardlab.watchdog.switches.ip9258 import IpPower9258

        return IpPower9258(cfg.name, url, cfg.user or "admin", _password(cfg, secrets), **common)
    if cfg.model == "dli-legacy":
        from diehardlab.watchdog.switches.dli import DliLegacy

        return DliLegacy(cfg.name, url, cfg.user or "admin", _password(cfg, secrets), **common)
    if cfg.model == "dli-rest":
        from diehardlab.watchdog.switches.dli import DliRest

        return DliRest(cfg.name, url, cfg.user or "admin", _password(cfg, secrets), **common)
    raise ConfigError(f"switch {cfg.name!r}: model {cfg.model!r} has no driver in this version (see docs/watchdog.md)")
