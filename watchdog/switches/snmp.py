"""SNMP-managed PDUs (APC PowerNet MIB, and the Lindy, Raritan, CyberPower units that work alike), SNMP v2c.

The outlet is switched by an SNMP SET of an integer on ``<snmp_oid>.<outlet>`` and read back by a GET of the
same object: for APC, ``sPDUOutletCtl`` = 1.3.6.1.4.1.318.1.1.4.4.2.1.3, with 1 = on and 2 = off (the
campaign's ``snmp_on`` / ``snmp_off``). The community string is a credential: it comes from the environment
variable named by ``community_env`` (or the secrets file), never from the campaign file. Uses ``pysnmp``
(asyncio API), each request with the switch's timeout and no retries, so a dead PDU fails fast.
"""

from __future__ import annotations

import asyncio

from diehardlab.watchdog.switches.base import Driver, SwitchError
from pysnmp.hlapi.v3arch.asyncio import (
    CommunityData,
    ContextData,
    Integer,
    ObjectIdentity,
    ObjectType,
    SnmpEngine,
    UdpTransportTarget,
    get_cmd,
    set_cmd,
)


class SnmpPdu(Driver):
    device = "SNMP PDU"

    def __init__(self, name: str, host: str, port: int, community: str, oid: str, on: int, off: int, **kw):
        super().__init__(name, **kw)
        self.host, self.port, self.community = host, port, community
        self.oid = oid.strip(".")
        self.on_value, self.off_value = on, off

    async def _request(self, outlet: int, value: int | None) -> int:
        engine = SnmpEngine()
        try:
            target = await UdpTransportTarget.create((self.host, self.port), timeout=self.timeout_s, retries=0)
            obj = ObjectType(ObjectIdentity(f"{self.oid}.{outlet}"), *([] if value is None else [Integer(value)]))
            cmd = get_cmd if value is None else set_cmd
            err_ind, err_status, _err_index, binds = await cmd(
                engine, CommunityData(self.community, mpModel=1), target, ContextData(), obj
            )
        finally:
            engine.close_dispatcher()
        if err_ind:
            raise SwitchError(f"switch {self.name!r}: SNMP {self.host}:{self.port}: {err_ind}")
        if err_status:
            raise SwitchError(f"switch {self.name!r}: SNMP error {err_status.prettyPrint()} on {self.oid}.{outlet}")
        try:
            return int(binds[0][1])
        except (IndexError, TypeError, ValueError) as exc:
            raise SwitchError(f"switch {self.name!r}: {self.oid}.{outlet} is not an integer outlet state") from exc

    def _set(self, outlet: int, on: bool) -> None:
        asyncio.run(self._request(outlet, self.on_value if on else self.off_value))

    def _get(self, outlet: int) -> bool:
        v = asyncio.run(self._request(outlet, None))
        if v not in (self.on_value, self.off_value):
            raise SwitchError(f"switch {self.name!r}: outlet {outlet} reports {v}, neither on nor off")
        return v == self.on_value
