"""Serial console capture through pyserial URLs: a pty pair, and a socket:// console that drops and returns."""

from __future__ import annotations

import os
import socket

from diehardlab.watchdog.console import ConsoleCapture

from tests.watchdog.conftest import free_port, wait_for


def test_pty_console_lines_are_timestamped(tmp_path):
    master, slave = os.openpty()
    con = ConsoleCapture("b1", os.ttyname(slave), 115200, tmp_path, retry_s=0.1)
    con.start()
    try:
        wait_for(lambda: con.path.exists() and "opened" in con.path.read_text())
        os.write(master, b"U-Boot 2024.01\r\nKernel panic - not syncing\r\n")
        wait_for(lambda: "Kernel panic" in con.path.read_text())
    finally:
        con.stop()
        os.close(master)
        os.close(slave)
    lines = con.path.read_text().splitlines()
    body = [x for x in lines if "#CONSOLE" not in x]
    assert [x[24:] for x in body] == ["U-Boot 2024.01", "Kernel panic - not syncing"]
    assert all(x[4] == "-" and x[10] == " " for x in body)  # "YYYY-MM-DD HH:MM:SS.mmm " prefix


def test_socket_console_reconnects_when_the_port_drops(tmp_path):
    port = free_port(socket.SOCK_STREAM)
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", port))
    srv.listen(1)
    con = ConsoleCapture("b1", f"socket://127.0.0.1:{port}", 115200, tmp_path, retry_s=0.1)
    con.start()
    try:
        c, _ = srv.accept()
        # pyserial discards what is already waiting when it opens a socket:// port: send after the open
        wait_for(lambda: con.path.exists() and con.path.read_text().count("#CONSOLE opened") == 1)
        c.sendall(b"first boot\n")
        wait_for(lambda: "first boot" in con.path.read_text())
        c.close()  # the console server drops the connection
        c2, _ = srv.accept()
        wait_for(lambda: con.path.read_text().count("#CONSOLE opened") == 2)
        c2.sendall(b"second boot\n")
        wait_for(lambda: "second boot" in con.path.read_text())
        c2.close()
    finally:
        con.stop()
        srv.close()
    text = con.path.read_text()
    assert text.count("#CONSOLE opened") >= 2 and con.reconnects >= 1


def test_the_server_captures_a_dut_console(tmp_path):
    from tests.watchdog.conftest import ServerThread, app_argv, events, local_campaign
    from tests.watchdog.test_watchdog_local import dut

    master, slave = os.openpty()
    try:
        path = local_campaign(tmp_path, dut("d1", app_argv(), extra=f'console = "{os.ttyname(slave)}"'))
        with ServerThread(path) as srv:
            j = srv.c.server.journal
            wait_for(lambda: events(j, "console-open", "d1"))
            os.write(master, b"[  12.345] NVRM: Xid 79, GPU has fallen off the bus\r\n")
            log = srv.c.server.log_dir / "console" / "d1.console.log"
            wait_for(lambda: log.exists() and "fallen off the bus" in log.read_text())
    finally:
        os.close(master)
        os.close(slave)
