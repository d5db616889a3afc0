"""Loopback emulators of network power switches, speaking each device's HTTP protocol (FORMATS.md 7).

Each keeps its outlets in memory, checks Basic auth like the device, and can report a new state only after
``report_delay_s`` (as many real switches do). ``on_change(outlet, on)`` lets a test make the outlet mean
something (stop and start an sshd, kill a benchmark). :class:`DeadSwitch` accepts connections and never answers.
"""

from __future__ import annotations

import base64
import json
import re
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


class _Emulator:
    outlets_n = 8

    def __init__(self, user: str = "admin", password: str = "s3cret", report_delay_s: float = 0.0,
                 on_change: Callable[[int, bool], None] | None = None):  # fmt: skip
        self.user, self.password = user, password
        self.report_delay_s = report_delay_s
        self.on_change = on_change
        self.state = dict.fromkeys(range(1, self.outlets_n + 1), True)
        self._changed_at: dict[int, tuple[float, bool]] = {}
        self.requests: list[tuple[str, str, dict]] = []
        emu = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _reply(self, code: int, body: str, ctype: str = "text/html") -> None:
                data = body.encode()
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                emu._serve(self, "GET")

            def do_POST(self):
                emu._serve(self, "POST")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def reported(self, outlet: int) -> bool:
        """The state the device reports: a change shows only ``report_delay_s`` after it happened."""
        if outlet in self._changed_at:
            when, old = self._changed_at[outlet]
            if time.monotonic() - when < self.report_delay_s:
                return old
        return self.state[outlet]

    def switch(self, outlet: int, on: bool) -> None:
        if self.state[outlet] != on:
            self._changed_at[outlet] = (time.monotonic(), self.state[outlet])
            self.state[outlet] = on
            if self.on_change:
                self.on_change(outlet, on)

    def _serve(self, h, method: str) -> None:
        if self._authorized(h):
            self._handle(h, method)

    def _authorized(self, h) -> bool:
        """HTTP Basic auth, as most switches do it; a wrong or missing password gets a 401 challenge."""
        want = "Basic " + base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        if h.headers.get("Authorization") == want:
            return True
        h.send_response(401)
        h.send_header("WWW-Authenticate", 'Basic realm="switch"')
        h.end_headers()
        return False

    def _handle(self, h, method: str) -> None:
        raise NotImplementedError

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


class LindyEmulator(_Emulator):
    """Lindy IPower: POST /ons.cgi?led=..., /offs.cgi?led=... (24 chars), POST /status.xml with <pot0>."""

    outlets_n = 8

    def _handle(self, h, method: str) -> None:
        u = urlsplit(h.path)
        self.requests.append((method, u.path, {"referer": h.headers.get("Referer", "")}))
        if method == "POST" and u.path in ("/ons.cgi", "/offs.cgi"):
            led = parse_qs(u.query).get("led", [""])[0]
            if not re.fullmatch(r"[01]{8,24}", led):
                h._reply(400, "bad led")
                return
            for i, ch in enumerate(led[: self.outlets_n], 1):
                if ch == "1":
                    self.switch(i, u.path == "/ons.cgi")
            h._reply(200, "Success!")
        elif u.path == "/status.xml":
            fields = ["IP9258", "admin", "0", "0", "0", "0", "0", "0", "0", "0"]
            fields += ["1" if self.reported(i) else "0" for i in range(1, self.outlets_n + 1)]
            h._reply(200, f"<response><pot0>{','.join(fields)}</pot0></response>", "text/xml")
        else:
            h._reply(404, "not found")


class NetioEmulator(_Emulator):
    """NETIO JSON API: GET /netio.json (state), POST /netio.json {"Outputs":[{"ID":n,"Action":a}]}."""

    outlets_n = 4

    def _doc(self) -> dict:
        return {
            "Agent": {"Model": "NETIO 4C", "Version": "3.4.0", "NumOutputs": self.outlets_n},
            "Outputs": [
                {"ID": i, "Name": f"output_{i}", "State": int(self.reported(i)), "Action": 6, "Delay": 5000}
                for i in range(1, self.outlets_n + 1)
            ],
        }

    def _handle(self, h, method: str) -> None:
        if urlsplit(h.path).path != "/netio.json":
            h._reply(404, "not found")
            return
        body = None
        if method == "POST":
            length = int(h.headers.get("Content-Length", 0))
            try:
                body = json.loads(h.rfile.read(length))
                for o in body["Outputs"]:
                    a = int(o["Action"])
                    if a in (0, 1):
                        self.switch(int(o["ID"]), a == 1)
                    elif a == 4:
                        self.switch(int(o["ID"]), not self.state[int(o["ID"])])
            except (ValueError, KeyError, TypeError):
                h._reply(400, "{}", "application/json")
                return
        self.requests.append((method, "/netio.json", body or {}))
        h._reply(200, json.dumps(self._doc()), "application/json")


class DeadSwitch:
    """Accepts TCP connections and never says a word: the switch that blocked field servers for minutes."""

    def __init__(self, port: int = 0):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)

    def _accept(self):
        self.sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                c, _ = self.sock.accept()
                self.conns.append(c)
            except OSError:
                continue

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self.thread.join(timeout=2)
        for c in self.conns:
            c.close()
        self.sock.close()


class Ip9258Emulator(_Emulator):
    """IP Power 9258: POST /tgi/iocontrol.tgi form P6<n-1>=On|Off; GET /set.cmd?cmd=getpower (p61=..)."""

    outlets_n = 4

    def _handle(self, h, method: str) -> None:
        u = urlsplit(h.path)
        if method == "POST" and u.path == "/tgi/iocontrol.tgi":
            length = int(h.headers.get("Content-Length", 0))
            form = parse_qs(h.rfile.read(length).decode())
            self.requests.append((method, u.path, form))
            for key, (value, *_) in form.items():
                m = re.fullmatch(r"P6(\d)", key)
                if m and value in ("On", "Off"):
                    self.switch(int(m.group(1)) + 1, value == "On")
            h._reply(200, "<html><title>I/O Control</title><td>Power1</td></html>")
        elif method == "GET" and u.path == "/set.cmd" and u.query.lower() == "cmd=getpower":
            body = ",".join(f"p6{i}={int(self.reported(i))}" for i in range(1, self.outlets_n + 1))
            h._reply(200, f"<html>{body}</html>")
        else:
            h._reply(404, "not found")


class DliRestEmulator(_Emulator):
    """Digital Loggers REST: PUT /restapi/relay/outlets/=<i>/state/ value=true|false; GET .../<i>/state/.
    Digest authentication is what the device uses; the emulator checks the X-CSRF header and that an
    Authorization header of the digest kind is present after the 401 challenge."""

    outlets_n = 8

    def _authorized(self, h) -> bool:
        auth = h.headers.get("Authorization", "")
        if auth.startswith("Digest ") and f'username="{self.user}"' in auth:
            return True
        h.send_response(401)
        h.send_header("WWW-Authenticate", 'Digest realm="DLI", nonce="abc123", qop="auth", algorithm=MD5')
        h.send_header("Content-Length", "0")
        h.end_headers()
        return False

    def _handle(self, h, method: str) -> None:
        if h.headers.get("X-CSRF") != "x":
            h._reply(403, "CSRF")
            return
        m = re.fullmatch(r"/restapi/relay/outlets/(=?)(\d+)/state/", urlsplit(h.path).path)
        if not m:
            h._reply(404, "not found")
            return
        outlet = int(m.group(2)) + 1
        if method == "PUT":
            length = int(h.headers.get("Content-Length", 0))
            form = parse_qs(h.rfile.read(length).decode())
            self.requests.append((method, h.path, form))
            self.switch(outlet, form.get("value", [""])[0] == "true")
            h._reply(204, "")
        else:
            h._reply(200, json.dumps(self.reported(outlet)), "application/json")

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        handler = self.httpd.RequestHandlerClass
        handler.do_PUT = lambda h: self._serve(h, "PUT")


class SnmpPduEmulator:
    """An SNMP v2c agent on loopback UDP answering GET/SET of ``<oid>.<outlet>`` (APC sPDUOutletCtl style:
    1 = on, 2 = off), built on pysnmp's protocol API; wrong community -> no answer, as real agents do."""

    def __init__(self, oid: str = "1.3.6.1.4.1.318.1.1.4.4.2.1.3", community: str = "private", outlets: int = 8):
        self.oid = tuple(int(x) for x in oid.split("."))
        self.community = community
        self.state = dict.fromkeys(range(1, outlets + 1), 1)
        self.sets: list[tuple[int, int]] = []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def _answer(self, data: bytes) -> bytes | None:
        from pyasn1.codec.ber import decoder, encoder
        from pysnmp.proto import api

        p = api.PROTOCOL_MODULES[api.SNMP_VERSION_2C]
        msg, _ = decoder.decode(data, asn1Spec=p.Message())
        if str(p.apiMessage.get_community(msg)) != self.community:
            return None
        pdu = p.apiMessage.get_pdu(msg)
        rsp = p.apiMessage.get_response(msg)
        rpdu = p.apiMessage.get_pdu(rsp)
        binds = []
        for oid, val in p.apiPDU.get_varbinds(pdu):
            key = tuple(oid)
            outlet = key[-1] if key[:-1] == self.oid else None
            if outlet not in self.state:
                binds.append((oid, p.NoSuchInstance("")))
                continue
            if pdu.isSameTypeWith(p.SetRequestPDU()):
                self.state[outlet] = int(val)
                self.sets.append((outlet, int(val)))
            binds.append((oid, p.Integer(self.state[outlet])))
        p.apiPDU.set_varbinds(rpdu, binds)
        return encoder.encode(rsp)

    def _serve(self):
        while not self._stop.is_set():
            try:
                data, addr = self.sock.recvfrom(4096)
            except OSError:
                continue
            out = self._answer(data)
            if out is not None:
                self.sock.sendto(out, addr)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self.thread.join(timeout=2)
        self.sock.close()


class DliLegacyEmulator(_Emulator):
    """Digital Loggers legacy web: GET /outlet?<n>=ON|OFF, GET /status with <div id="state">hex</div>."""

    outlets_n = 8

    def _handle(self, h, method: str) -> None:
        u = urlsplit(h.path)
        self.requests.append((method, h.path, {}))
        if u.path == "/outlet":
            m = re.fullmatch(r"(\d)=(ON|OFF)", u.query)
            if not m:
                h._reply(400, "bad request")
                return
            self.switch(int(m.group(1)), m.group(2) == "ON")
            h._reply(200, '<META HTTP-EQUIV="refresh" content="0; URL=/index.htm">')
        elif u.path == "/status":
            mask = sum(1 << (i - 1) for i in range(1, self.outlets_n + 1) if self.reported(i))
            h._reply(200, f'<div id="state">{mask:02x}</div><div id="lock">00</div><div id="perm">ff</div>')
        else:
            h._reply(404, "not found")
