"""Which ``Host`` headers the server answers: a guard against DNS rebinding.

A web page on another site can make the browser send requests to
``127.0.0.1:5006`` under a name the attacker controls (``evil.example``
resolving to 127.0.0.1); the browser then treats the answers as that site's
own. The server refuses a request whose ``Host`` is not a name it is served
under: loopback addresses and ``localhost``, the bound address, and when bound
to every interface the machine's names and any IP literal (rebinding needs a
name), plus what ``--allowed-host`` adds.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any, Iterable

from tornado.web import RequestHandler

__all__ = ["HostGuard", "install"]

_LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}


class HostGuard:
    def __init__(self, address: str, extra: Iterable[str] = ()) -> None:
        self.every_interface = address in ("0.0.0.0", "::", "")
        names = set(_LOOPBACK_NAMES) | {address.lower()} | {h.lower() for h in extra}
        if self.every_interface:
            names |= {socket.gethostname().lower(), socket.getfqdn().lower()}
        self.names = {n for n in names if n}

    def allows(self, host_header: str) -> bool:
        name = _hostname(host_header)
        if name in self.names:
            return True
        try:
            ip = ipaddress.ip_address(name)
        except ValueError:
            return False
        return ip.is_loopback or self.every_interface

    def describe(self) -> str:
        return ", ".join(sorted(self.names)) + (" or any IP address" if self.every_interface else "")


def _hostname(host_header: str) -> str:
    host = (host_header or "").strip().lower()
    if host.startswith("["):  # [::1]:5006
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class _UnknownHost(RequestHandler):
    def initialize(self, guard: HostGuard) -> None:
        self.guard = guard

    def prepare(self) -> None:
        self.set_status(400)
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.finish(f"this dashboard does not answer to the name {_hostname(self.request.host)!r}: open it as "
                    f"{self.guard.describe()}, or start it with --allowed-host NAME (a proxy's name)\n")


def install(tornado_app: Any, guard: HostGuard) -> None:
    """Route every request with an unknown ``Host`` to a 400 before any page, route or websocket sees it."""
    find_handler = tornado_app.find_handler

    def checked(request, **kwargs):
        if not guard.allows(request.host):
            return tornado_app.get_handler_delegate(request, _UnknownHost, {"guard": guard})
        return find_handler(request, **kwargs)

    tornado_app.find_handler = checked
