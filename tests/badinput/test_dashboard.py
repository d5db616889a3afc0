"""Bad input to ``diehard dashboard`` and ``diehard serve --dashboard``: one line, no traceback, nothing started."""

from __future__ import annotations

import socket

import pytest

from tests.badinput.battery import check_refused
from tests.watchdog.dashboard_kit import live_campaign


def test_a_network_bind_without_a_token_is_refused(tmp_path):
    path = live_campaign(tmp_path)
    journal = tmp_path / "journal.jsonl"
    check_refused("dashboard", str(path), "--bind", "0.0.0.0:8080", names=["0.0.0.0", "token_secret"])
    check_refused("serve", str(path), "--dashboard", "0.0.0.0:8080", names=["0.0.0.0", "token_secret"],
                  outputs=[journal])  # fmt: skip
    # the entry named by the campaign must be in a secrets file
    path.write_text(path.read_text() + 'token_secret = "dashboard"\n')
    check_refused("dashboard", str(path), "--bind", "0.0.0.0:8080", names=["secrets_file"])


def test_bad_addresses_and_folders_are_named(tmp_path):
    path = live_campaign(tmp_path)
    check_refused("dashboard", str(path), "--bind", "127.0.0.1:http", names=["--bind", "127.0.0.1:http"])
    check_refused("dashboard", str(path), "--logs", str(tmp_path / "nowhere"), names=["--logs", "nowhere"])


def test_a_port_already_taken_stops_the_server_before_it_starts_anything(tmp_path):
    path = live_campaign(tmp_path)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = check_refused("serve", str(path), "--dashboard", f"127.0.0.1:{port}", names=[f"127.0.0.1:{port}"])
    assert "in use" in r.result.stderr
    assert not (tmp_path / "local-duts").exists()  # no benchmark was started, no key written


@pytest.mark.parametrize("value", ["nan", "inf", "-1"])
def test_a_duration_that_is_not_a_finite_positive_number(tmp_path, value):
    """NaN passed the old '<= 0' check: the page then served until killed, or stopped at once."""
    path = live_campaign(tmp_path)
    check_refused("dashboard", str(path), "--duration", value, names=["--duration", "finite"])
    check_refused("serve", str(path), "--duration", value, names=["--duration", "finite"],
                  outputs=[tmp_path / "journal.jsonl"])  # fmt: skip
