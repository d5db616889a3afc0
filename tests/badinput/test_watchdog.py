"""Bad input to the server commands (``serve``, ``status``, ``power``) and to the files they read: campaign,
secrets and status files that are not what they should be, campaign values that cannot work, path tricks in
names, and the DUT-side half of the name rule (``diehard run --dut/--hostname``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.badinput.battery import check_refused

CAMPAIGN = """
[campaign]
name = "bad"

[server]
bind = "127.0.0.1"
udp_port = 9
log_dir = "logs"
journal = "journal.jsonl"

[[switch]]
name = "sim"
model = "simulated"
outlets = 4

[[switch]]
name = "pdu"
model = "netio"
host = "10.0.0.9"
user = "admin"
password_env = "PDU_PW"

[[dut]]
name = "d1"
transport = "local"
switch = "sim"
outlet = 1
liveness_timeout_s = 30

[[dut.benchmark]]
name = "app"
argv = ["sleep", "600"]

[[dut]]
name = "d2"
transport = "local"
switch = "sim"
outlet = 2

[[dut.benchmark]]
name = "app"
argv = ["sleep", "600"]

[facility]
kind = "chipir"
flux_factor = 1.2e-3

[[facility.beam_windows]]
start = 2026-11-30T10:00:00
end = 2026-11-30T18:00:00

[analysis]
sea_level_flux = 13.0
"""


@pytest.fixture
def campaign(tmp_path: Path) -> Path:
    p = tmp_path / "campaign.toml"
    p.write_text(CAMPAIGN)
    return p


def _edit(p: Path, old: str, new: str, count: int = 1) -> Path:
    text = p.read_text()
    assert old in text, old
    p.write_text(text.replace(old, new, count))
    return p


def test_the_base_campaign_is_valid(campaign):
    from tests.conftest import run_diehard

    r = run_diehard("serve", "--check", str(campaign))
    assert r.returncode == 0 and "the file is valid" in r.stdout, r.stderr


@pytest.mark.parametrize(
    "command, kind",
    [("serve --check", "latin-1"), ("serve --check", "binary"), ("serve --check", "directory"),
     ("status", "binary"), ("power d1 state", "directory")],
)  # fmt: skip
def test_a_campaign_path_that_is_not_toml_text(tmp_path, command, kind):
    p = tmp_path / "campaign.toml"
    if kind == "latin-1":
        p.write_bytes(CAMPAIGN.replace('"bad"', '"b\xe4d"').encode("latin-1"))
    elif kind == "binary":
        p.write_bytes(bytes(range(256)) * 4)
    else:
        p.mkdir()
    cmd, *rest = command.split()
    args = [cmd, *rest[:1], str(p), *rest[1:]] if cmd == "serve" else [cmd, str(p), *rest]
    check_refused(*args, names=(str(p),))


# Values a campaign file must not hold: (edit of the base campaign, words the error must contain). Each is
# refused in-process here (cheap); COMMAND_CASES also go through 'diehard serve --check' as a user runs it.
CASES = {
    "dut name ..": (('name = "d1"', 'name = ".."'), ("name",)),
    "dut name .": (('name = "d1"', 'name = "."'), ("name",)),
    "dut name -rf": (('name = "d1"', 'name = "-rf"'), ("name",)),
    "hostname ../x": (('name = "d1"', 'name = "d1"\nhostname = "../x"'), ("hostname",)),
    "hostname a/b": (('name = "d1"', 'name = "d1"\nhostname = "a/b"'), ("hostname",)),
    "hostname ..": (('name = "d1"', 'name = "d1"\nhostname = ".."'), ("hostname",)),
    "hostname twice": (('name = "d1"', 'name = "d1"\nhostname = "d2"'), ("hostname", "d2")),
    "host is an option": (('name = "d1"', 'name = "d1"\nhost = "-oProxyCommand=x"'), ("host",)),
    "benchmark ../app": (('name = "app"', 'name = "../app"'), ("name",)),
    "switch twice": (('name = "sim"\nmodel', 'name = "pdu"\nmodel'), ("switch", "pdu")),
    "outlet twice": (("outlet = 2", "outlet = 1"), ("outlet 1", "d1", "d2")),
    "benchmark twice": (
        ('argv = ["sleep", "600"]\n', 'argv = ["sleep", "600"]\n[[dut.benchmark]]\nname = "app"\nargv = ["true"]\n'),
        ("benchmark", "app"),
    ),
    "liveness inf": (("liveness_timeout_s = 30", "liveness_timeout_s = inf"), ("liveness_timeout_s",)),
    "liveness nan": (("liveness_timeout_s = 30", "liveness_timeout_s = nan"), ("liveness_timeout_s",)),
    "switch timeout inf": (("outlets = 4", "outlets = 4\ntimeout_s = inf"), ("timeout_s",)),
    "poll inf": (("[server]\n", "[server]\npoll_s = inf\n"), ("poll_s",)),
    "window 1e400": (("[server]\n", "[server]\ndatagram_window_s = 1e400\n"), ("datagram_window_s",)),
    "rotation inf": (("[dut.benchmark]]\nname", "[dut.benchmark]]\nwindow_s = inf\nname"), ("window_s",)),
    "sea-level flux < 0": (("sea_level_flux = 13.0", "sea_level_flux = -13.0"), ("sea_level_flux",)),
    "flux factor inf": (("flux_factor = 1.2e-3", "flux_factor = inf"), ("flux_factor",)),
    "beam window reversed": (("end = 2026-11-30T18:00:00", "end = 2026-11-30T08:00:00"), ("beam_windows", "end")),
}
COMMAND_CASES = ["dut name ..", "hostname ../x", "outlet twice", "switch twice", "benchmark twice", "liveness inf",
                 "flux factor inf", "beam window reversed"]  # fmt: skip


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_campaign_refuses(campaign, case):
    from diehardlab.campaign import load_campaign
    from diehardlab.errors import ConfigError

    (old, new), names = CASES[case]
    with pytest.raises(ConfigError) as info:
        load_campaign(_edit(campaign, old, new))
    assert str(campaign) in str(info.value) and len(str(info.value).splitlines()) == 1
    for word in names:
        assert word in str(info.value)


@pytest.mark.parametrize("case", COMMAND_CASES)
def test_serve_check_refuses(campaign, case):
    (old, new), names = CASES[case]
    check_refused("serve", "--check", str(_edit(campaign, old, new)), names=names)


@pytest.mark.parametrize("host", ["http://admin:hunter2@10.0.0.9", "https://:hunter2@10.0.0.9:8443"])
def test_credentials_in_a_switch_url_are_refused_and_never_echoed(campaign, host):
    r = check_refused("serve", "--check", str(_edit(campaign, 'host = "10.0.0.9"', f'host = "{host}"')),
                      names=("pdu", "host", "password_env"))  # fmt: skip
    assert "hunter2" not in r.result.stderr + r.result.stdout


@pytest.mark.parametrize("kind", ["binary", "latin-1", "directory", "not-strings"])
def test_a_secrets_file_that_is_not_one(campaign, kind):
    secrets = campaign.parent / "secrets.toml"
    if kind == "directory":
        secrets.mkdir()
    else:
        latin1 = 'pdu = "h\xe4sli"\n'.encode("latin-1")
        secrets.write_bytes({"binary": bytes(range(256)), "latin-1": latin1, "not-strings": b"pdu = 3\n"}[kind])
        secrets.chmod(0o600)
    _edit(campaign, "[server]\n", '[server]\nsecrets_file = "secrets.toml"\n')
    _edit(campaign, 'password_env = "PDU_PW"', 'secret = "pdu"')
    check_refused("serve", "--check", str(campaign), names=(str(secrets),))
    if kind == "directory":
        check_refused("power", str(campaign), "d1", "state", names=(str(secrets),))


@pytest.mark.parametrize("content", [b"", b"{}", b"\x00\xff\x13binary", b'{"time": 3, "duts": []}'])
def test_a_status_file_that_is_not_one(campaign, content):
    status = campaign.parent / "journal.status.json"
    status.write_bytes(content)
    check_refused("status", str(campaign), names=(str(status),), outputs=[status])


def test_a_status_file_that_is_a_directory(campaign):
    status = campaign.parent / "journal.status.json"
    status.mkdir()
    check_refused("status", str(campaign), names=(str(status),))


def test_a_journal_that_is_a_directory_or_garbage(campaign):
    journal = campaign.parent / "journal.jsonl"
    journal.mkdir()
    check_refused("serve", str(campaign), "--duration", "1", names=(str(journal),))
    check_refused("status", str(campaign), names=(str(journal),))
    journal.rmdir()
    journal.write_bytes(b'{"event":"server-start"}\n\x00\xff garbage line\n{"event":"server-stop"}\n')
    check_refused("status", str(campaign), names=(f"{journal}:2",), outputs=[journal])
    check_refused("serve", str(campaign), "--duration", "1", names=(f"{journal}:2",), outputs=[journal])
    assert not (campaign.parent / "local-duts").exists()


@pytest.mark.parametrize("off", ["-5", "nan", "inf"])
def test_power_cycle_off_time_is_checked_before_switching(campaign, off):
    state = campaign.parent / "simulated-switch-sim.json"
    state.write_text('{"1": true, "2": true}')
    check_refused("power", str(campaign), "d1", "cycle", "--off-time", off, names=("--off-time",), outputs=[state])


@pytest.mark.parametrize("option, value", [("--dut", "../x"), ("--hostname", "..")])
def test_run_refuses_names_that_would_be_paths(tmp_path, option, value):
    logs = tmp_path / "logs"
    check_refused(
        "run", str(tmp_path / "ckpt"), "--golden", str(tmp_path / "g.pt"), "--log-dir", str(logs),
        "--server", "127.0.0.1:9", option, value, names=(option,), outputs=[logs],
    )  # fmt: skip


def test_serve_refuses_a_log_dir_it_cannot_make(campaign):
    blocker = campaign.parent / "logs"
    blocker.write_text("a file where the log folder should be\n")
    check_refused("serve", str(campaign), "--duration", "1", names=(str(blocker),))
    assert not (campaign.parent / "journal.jsonl").exists()


def test_a_journal_snapshot_with_mistyped_counters(campaign):
    """A DUT resumed from ``"sdc": "many"`` made its supervisor raise at its first SDC, again and again."""
    journal = campaign.parent / "journal.jsonl"
    journal.write_text('{"time":"2026-12-01T10:00:00Z","event":"progress","dut":"d2","snap":{"sdc":"many"}}\n')
    check_refused("serve", str(campaign), "--duration", "1", names=(str(journal), "d2", "sdc"), outputs=[journal])
    assert not (campaign.parent / "local-duts").exists()
