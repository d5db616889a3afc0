"""The dashboard's HTTP side (aiohttp): a page, its two static files, a server-sent-event stream, a JSON snapshot.

Security, because the page shows a campaign's state and runs next to the switches that power the boards:

- read-only: GET only (and the login form's POST); no route changes anything, and the page has no buttons
  that act;
- bound to loopback by default; a loopback-bound page answers only requests whose ``Host`` is a loopback
  name, so another web site cannot read it through DNS rebinding;
- any other bind needs a token, read from the secrets file (``[dashboard] token_secret`` names the entry).
  It is typed into a login form (a POST body, never a URL, so it ends up in no log or browser history) and
  exchanged for a random session cookie (HttpOnly, SameSite=Strict); scripts may send
  ``Authorization: Bearer TOKEN`` instead. A wrong token costs one second. The dashboard keeps no access log;
- everything the page needs is served from here (no CDN: beam rooms are often offline), under a
  Content-Security-Policy that allows nothing else, no inline script and no framing.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import secrets
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any

from aiohttp import web

from diehardlab.errors import ConfigError

STATIC = ("dashboard.js", "dashboard.css")
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1", "[::1]")
SESSION_COOKIE = "diehard_dashboard"
SESSION_S = 12 * 3600.0
WRONG_TOKEN_DELAY_S = 1.0
MIN_TOKEN_LEN = 16
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)


@dataclass(frozen=True)
class Bind:
    host: str
    port: int

    @property
    def loopback(self) -> bool:
        return is_loopback(self.host)

    def url(self, port: int | None = None) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port if port is None else port}/"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything


def parse_bind(text: str, option: str = "--bind") -> Bind:
    """``HOST:PORT``, ``[V6]:PORT`` or ``PORT`` (loopback)."""
    s = text.strip()
    host, port = "127.0.0.1", s
    if s.startswith("["):
        host, _, rest = s[1:].partition("]")
        port = rest.removeprefix(":")
    elif ":" in s:
        host, _, port = s.rpartition(":")
    try:
        p = int(port)
        if not 0 <= p <= 65535:
            raise ValueError
    except ValueError:
        raise ConfigError(f"{option} {text!r}: give HOST:PORT, e.g. 127.0.0.1:8080") from None
    if not host:
        raise ConfigError(f"{option} {text!r}: give the address to bind, e.g. 127.0.0.1:{p} (0.0.0.0 needs a token)")
    return Bind(host, p)


def _static(name: str) -> bytes:
    return (resources.files("diehardlab.watchdog.dashboard") / "static" / name).read_bytes()


class Guard:
    """Who may read the page: loopback Host names on a loopback bind; a session or bearer token elsewhere."""

    def __init__(self, bind: Bind, token: str | None):
        if not bind.loopback and token is None:
            raise ConfigError(
                f"the dashboard binds to {bind.host}, which is not loopback: it needs a token. Put a long random "
                'value in the secrets file ([server] secrets_file, mode 0600), e.g. dashboard = "..." from '
                "'python3 -c \"import secrets; print(secrets.token_urlsafe(32))\"', and name it in the campaign "
                'file: [dashboard] token_secret = "dashboard". Or bind to 127.0.0.1 and use an SSH tunnel.'
            )
        if token is not None and len(token) < MIN_TOKEN_LEN:
            raise ConfigError(f"the dashboard token is too short ({len(token)} characters; use >= {MIN_TOKEN_LEN})")
        self.bind = bind
        self.token = token
        self.sessions: dict[str, float] = {}
        self.refused = 0

    def host_ok(self, request: web.Request) -> bool:
        if self.token is not None:
            return True
        host = request.host.lower()
        name = host[: host.find("]") + 1] if host.startswith("[") else host.split(":")[0]
        return name in LOOPBACK_NAMES or name.endswith(".localhost")

    def authorised(self, request: web.Request) -> bool:
        if self.token is None:
            return True
        auth = request.headers.get("Authorization", "")
        if auth.startswith("Bearer ") and hmac.compare_digest(auth[7:].strip().encode(), self.token.encode()):
            return True
        sid = request.cookies.get(SESSION_COOKIE, "")
        expiry = self.sessions.get(sid)
        if expiry is None:
            return False
        if expiry < time.time():
            self.sessions.pop(sid, None)
            return False
        return True

    def new_session(self) -> str:
        now = time.time()
        for sid in [s for s, t in self.sessions.items() if t < now]:
            del self.sessions[sid]
        sid = secrets.token_urlsafe(32)
        self.sessions[sid] = now + SESSION_S
        return sid


LOGIN_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>diehard dashboard: sign in</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="stylesheet" href="/static/dashboard.css"></head>
<body class="login"><main><h1>diehard dashboard</h1>
<p>This dashboard is bound to a network address: give its token (the secrets file's entry named by
<code>[dashboard] token_secret</code>).</p>
<form method="post" action="/login"><label>token <input type="password" name="token" autocomplete="off"
autofocus required></label> <button type="submit">sign in</button></form>{msg}</main></body></html>
"""


def make_app(
    guard: Guard,
    page: bytes,
    events: Callable[[web.Request], Awaitable[web.StreamResponse]],
    snapshot: Callable[[], dict[str, Any]],
    health: Callable[[], dict[str, Any]],
) -> web.Application:
    static = {name: _static(name) for name in STATIC}

    @web.middleware
    async def security(request: web.Request, handler):
        if not guard.host_ok(request):
            guard.refused += 1
            return web.Response(status=421, text="this dashboard answers to localhost only\n")
        if request.method not in ("GET", "HEAD") and request.path != "/login":
            return web.Response(status=405, text="the dashboard is read-only\n")
        public = request.path in ("/login", "/static/dashboard.css")
        if not public and not guard.authorised(request):
            if request.path == "/" and request.method in ("GET", "HEAD"):
                raise web.HTTPSeeOther("/login")
            return web.Response(status=401, text="sign in at /login first\n")
        return await handler(request)

    async def on_prepare(request: web.Request, response: web.StreamResponse) -> None:
        h = response.headers
        h["Content-Security-Policy"] = CSP
        h["X-Content-Type-Options"] = "nosniff"
        h["X-Frame-Options"] = "DENY"
        h["Referrer-Policy"] = "no-referrer"
        h.setdefault("Cache-Control", "no-store")

    async def index(request: web.Request) -> web.Response:
        return web.Response(body=page, content_type="text/html", charset="utf-8")

    async def static_file(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in static:
            raise web.HTTPNotFound()
        kind = "text/css" if name.endswith(".css") else "text/javascript"
        return web.Response(body=static[name], content_type=kind, charset="utf-8")

    async def login_form(request: web.Request) -> web.Response:
        if guard.token is None:
            raise web.HTTPSeeOther("/")
        return web.Response(text=LOGIN_PAGE.format(msg=""), content_type="text/html")

    async def login(request: web.Request) -> web.Response:
        if guard.token is None:
            raise web.HTTPSeeOther("/")
        form = await request.post()
        given = str(form.get("token", ""))
        if not hmac.compare_digest(given.encode(), guard.token.encode()):
            await asyncio.sleep(WRONG_TOKEN_DELAY_S)
            print(f"dashboard: wrong token from {request.remote}", file=sys.stderr, flush=True)
            return web.Response(
                status=403, text=LOGIN_PAGE.format(msg='<p class="bad">wrong token</p>'), content_type="text/html"
            )
        resp = web.Response(status=303, headers={"Location": "/"})
        resp.set_cookie(SESSION_COOKIE, guard.new_session(), max_age=int(SESSION_S), httponly=True,
                        samesite="Strict", path="/")  # fmt: skip
        return resp

    async def state(request: web.Request) -> web.Response:
        return web.json_response(snapshot(), dumps=_dumps)

    async def health_route(request: web.Request) -> web.Response:
        return web.json_response(health(), dumps=_dumps)

    app = web.Application(middlewares=[security], client_max_size=64 << 10)
    app.on_response_prepare.append(on_prepare)
    app.router.add_get("/", index)
    app.router.add_get("/static/{name}", static_file)
    app.router.add_get("/login", login_form)
    app.router.add_post("/login", login)
    app.router.add_get("/events", events)
    app.router.add_get("/api/state", state)
    app.router.add_get("/api/health", health_route)
    return app


def _dumps(obj: Any) -> str:
    import json

    return json.dumps(obj, allow_nan=False)
