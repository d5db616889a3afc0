"""Campaign files: precise errors, refused passwords, secrets files, references between tables."""

from __future__ import annotations

import os

import pytest

from diehardlab.campaign import load_campaign
from diehardlab.config import read_secrets
from diehardlab.errors import ConfigError

GOOD = """
[campaign]
name = "lab-1"

[server]
udp_port = 9024
log_dir = "logs"

[[switch]]
name = "netio-1"
model = "netio"
host = "192.168.0.20"
user = "admin"
password_env = "NETIO_PASSWORD"

[[dut]]
name = "board-1"
host = "192.168.0.11"
switch = "netio-1"
outlet = 2
ssh = { user = "carol", key = "~/.ssh/id_ed25519" }

  [[dut.benchmark]]
  name = "resnet20"
  argv = ["diehard", "run", "ckpt", "--golden", "golden.pt"]

[facility]
kind = "chipir"
flux_factor = 1.2e-3
timezone = "Europe/London"
flux_logs = ["flux/countlog.txt"]
"""


def write(tmp_path, text, name="campaign.toml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_good_campaign_and_relative_paths(tmp_path):
    c = load_campaign(write(tmp_path, GOOD))
    assert c.duts[0].hostname == "board-1" and c.duts[0].benchmarks[0].window_s == 3600
    assert c.server.log_dir == tmp_path / "logs"
    assert c.facility.flux_logs == [tmp_path / "flux/countlog.txt"]
    assert c.switch("netio-1").password_env == "NETIO_PASSWORD"


@pytest.mark.parametrize(
    "edit, message",
    [
        (('password_env = "NETIO_PASSWORD"', 'password = "hunter2"'), "switch[1] -> password: passwords do not"),
        (("udp_port = 9024", 'udp_port = "x"'), "server -> udp_port: Input should be a valid integer"),
        (("outlet = 2", "outlet = 2\nwindow = 3"), 'dut[1] "board-1" -> window: unknown key'),
        (('switch = "netio-1"', 'switch = "lindy"'), "uses switch 'lindy', which no [[switch]] table defines"),
        (('timezone = "Europe/London"', 'timezone = "Europe/Londres"'), "unknown time zone 'Europe/Londres'"),
        (("flux_factor = 1.2e-3", ""), "flux_factor"),
        (('name = "resnet20"', 'name = "resnet 20"'), 'benchmark[1] "resnet 20" -> name: String should match'),
    ],
)
def test_errors_name_the_file_and_the_field(tmp_path, edit, message):
    p = write(tmp_path, GOOD.replace(*edit))
    with pytest.raises(ConfigError) as info:
        load_campaign(p)
    assert str(p) in str(info.value) and message in str(info.value)


def test_toml_syntax_error_has_line(tmp_path):
    p = write(tmp_path, GOOD.replace("[server]", "[server"))
    with pytest.raises(ConfigError, match=r"not valid TOML.*line 5"):
        load_campaign(p)


def test_secrets_file_must_be_private(tmp_path):
    p = tmp_path / "secrets.toml"
    p.write_text('netio = "s3cret"\n')
    os.chmod(p, 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        read_secrets(p)
    os.chmod(p, 0o600)
    assert read_secrets(p) == {"netio": "s3cret"}
