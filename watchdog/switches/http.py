"""Shared HTTP plumbing of the switch drivers: one session, a timeout on every call, clear errors."""

from __future__ import annotations

from typing import Any

import requests
from diehardlab.watchdog.switches.base import SwitchError


class HttpClient:
    def __init__(self, name: str, base_url: str, timeout_s: float, auth: Any = None, headers: dict | None = None):
        self.name = name
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.session = requests.Session()
        self.session.auth = auth
        if headers:
            self.session.headers.update(headers)

    def request(self, method: str, path: str, **kw: Any) -> requests.Response:
        url = self.base_url + path
        try:
            # (connect, read): a switch that accepts the connection and then never answers is a timeout too.
            r = self.session.request(method, url, timeout=(self.timeout_s, self.timeout_s), **kw)
        except requests.Timeout as exc:
            raise SwitchError(
                f"switch {self.name!r}: no answer from {method} {url} within {self.timeout_s:g} s"
            ) from exc
        except requests.RequestException as exc:
            raise SwitchError(f"switch {self.name!r}: {method} {url} failed: {exc}") from exc
        if r.status_code == 401:
            raise SwitchError(f"switch {self.name!r}: {url} refused the credentials (HTTP 401)")
        if r.status_code >= 400:
            raise SwitchError(f"switch {self.name!r}: {method} {url} answered HTTP {r.status_code}")
        return r


def base_url(host: str, port: int | None) -> str:
    if host.startswith(("http://", "https://")):
        return host if port is None else f"{host}:{port}"
    return f"http://{host}" + (f":{port}" if port else "")
