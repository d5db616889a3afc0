"""Switch drivers against loopback emulators of each device's HTTP protocol."""

from __future__ import annotations

import time

import pytest
from diehardlab.watchdog.switches import SwitchError, make_switch
from diehardlab.watchdog.switches.lindy import led_mask

from diehardlab.campaign import Switch
from diehardlab.errors import ConfigError
from tests.watchdog.emulators import DeadSwitch, LindyEmulator, NetioEmulator


def _cfg(model: str, port: int, **kw) -> Switch:
    return Switch(name="sw", model=model, host="127.0.0.1", port=port, user="admin", password_env="SW_PW", **kw)


@pytest.fixture(autouse=True)
def _pw(monkeypatch):
    monkeypatch.setenv("SW_PW", "s3cret")


def test_lindy_on_off_state_and_cycle():
    with LindyEmulator() as emu:
        sw = make_switch(_cfg("lindy-ipower", emu.port, timeout_s=2, settle_s=1))
        sw.off(3)
        assert emu.state[3] is False and emu.state[2] is True
        assert sw.state(3) is False
        sw.on(3)
        assert sw.state(3) is True
        sw.cycle(5, 0.05)
        assert emu.state[5] is True
        paths = [p for _, p, _ in emu.requests]
        assert paths.count("/offs.cgi") == 2 and paths.count("/ons.cgi") == 2
        assert all(r["referer"] == f"http://127.0.0.1:{emu.port}/outlet.htm" for _, _, r in emu.requests)
    assert led_mask(3) == "001" + "0" * 21


def test_lindy_wrong_password_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("SW_PW", "wrong")
    with LindyEmulator() as emu:
        sw = make_switch(_cfg("lindy-ipower", emu.port, timeout_s=2))
        with pytest.raises(SwitchError, match="401"):
            sw.state(1)


def test_netio_json_api_and_late_state_report():
    with NetioEmulator(report_delay_s=0.4) as emu:
        sw = make_switch(_cfg("netio", emu.port, timeout_s=2, settle_s=2))
        t = time.monotonic()
        sw.off(2)  # read-back polls until the switch reports the change
        assert time.monotonic() - t >= 0.35
        assert emu.state[2] is False and sw.state(2) is False
        posts = [b for m, _, b in emu.requests if m == "POST"]
        assert posts[0] == {"Outputs": [{"ID": 2, "Action": 0}]}


def test_state_reported_too_late_is_an_error():
    with NetioEmulator(report_delay_s=5) as emu:
        sw = make_switch(_cfg("netio", emu.port, timeout_s=2, settle_s=0.3))
        with pytest.raises(SwitchError, match="still reports on"):
            sw.off(1)


def test_dead_switch_times_out():
    with DeadSwitch() as dead:
        sw = make_switch(_cfg("netio", dead.port, timeout_s=0.3))
        t = time.monotonic()
        with pytest.raises(SwitchError, match="no answer"):
            sw.off(1)
        assert time.monotonic() - t < 2


def test_outlet_out_of_range_and_missing_env(monkeypatch):
    with NetioEmulator() as emu:
        sw = make_switch(_cfg("netio", emu.port))
        with pytest.raises(SwitchError, match="outlet 9"):
            sw.on(9)
    monkeypatch.delenv("SW_PW")
    with pytest.raises(ConfigError, match="SW_PW"):
        make_switch(_cfg("netio", 1))


def test_simulated_switch_keeps_state_in_its_file(tmp_path):
    cfg = Switch(name="sim", model="simulated", outlets=4)
    a = make_switch(cfg, state_dir=tmp_path)
    b = make_switch(cfg, state_dir=tmp_path)
    assert a.state(2) is True
    a.off(2)
    assert b.state(2) is False
    b.cycle(2, 0.0)
    assert a.state(2) is True


def test_command_switch(tmp_path):
    state = tmp_path / "outlet"
    cfg = Switch(
        name="cmd", model="command", on_command=["sh", "-c", f"echo on > {state}.{{outlet}}"],
        off_command=["sh", "-c", f"echo off > {state}.{{outlet}}"], state_command=["cat", f"{state}.{{outlet}}"],
    )  # fmt: skip
    sw = make_switch(cfg)
    sw.off(1)
    assert (tmp_path / "outlet.1").read_text().strip() == "off"
    sw.on(1)
    assert sw.state(1) is True


def test_ip9258_form_and_getpower():
    from diehardlab.watchdog.switches.ip9258 import parse_getpower

    from tests.watchdog.emulators import Ip9258Emulator

    with Ip9258Emulator() as emu:
        sw = make_switch(_cfg("ip9258", emu.port, outlets=4, timeout_s=2))
        sw.off(4)
        assert emu.state[4] is False and sw.state(4) is False and sw.state(1) is True
        assert emu.requests[0][2] == {"P63": ["Off"], "Apply": ["Apply"]}
    assert parse_getpower("<html>P60=0,P61=1</html>") == {1: False, 2: True}


def test_dli_rest_with_digest_auth():
    from tests.watchdog.emulators import DliRestEmulator

    with DliRestEmulator() as emu:
        sw = make_switch(_cfg("dli-rest", emu.port, timeout_s=2))
        sw.off(6)
        assert emu.state[6] is False and sw.state(6) is False
        sw.on(6)
        assert emu.requests[0][1] == "/restapi/relay/outlets/=5/state/"
        assert emu.requests[-1][2] == {"value": ["true"]}


def test_snmp_pdu_set_and_get(monkeypatch):
    from tests.watchdog.emulators import SnmpPduEmulator

    monkeypatch.setenv("PDU_COMMUNITY", "private")
    with SnmpPduEmulator() as agent:
        cfg = Switch(
            name="apc", model="snmp", host="127.0.0.1", port=agent.port, community_env="PDU_COMMUNITY",
            snmp_oid="1.3.6.1.4.1.318.1.1.4.4.2.1.3", snmp_on=1, snmp_off=2, timeout_s=1, settle_s=0.5,
        )  # fmt: skip
        sw = make_switch(cfg)
        sw.off(5)
        assert agent.state[5] == 2 and sw.state(5) is False and sw.state(4) is True
        sw.on(5)
        assert agent.sets == [(5, 2), (5, 1)]
        monkeypatch.setenv("PDU_COMMUNITY", "wrong")  # a wrong community gets no answer: a timeout, not a hang
        t = time.monotonic()
        with pytest.raises(SwitchError, match="SNMP"):
            make_switch(cfg).state(1)
        assert time.monotonic() - t < 5


def test_dli_legacy_outlet_and_status_mask():
    from tests.watchdog.emulators import DliLegacyEmulator

    with DliLegacyEmulator(report_delay_s=0.2) as emu:
        sw = make_switch(_cfg("dli-legacy", emu.port, timeout_s=2, settle_s=1))
        sw.off(7)
        assert emu.state[7] is False and sw.state(7) is False and sw.state(8) is True
        sw.on(7)
        assert [p for _, p, _ in emu.requests if p.startswith("/outlet")] == ["/outlet?7=OFF", "/outlet?7=ON"]
