"""The dashboard server: Panel pages and the REST routes on one Bokeh/Tornado server.

``PAGES`` lists the pages (route, title, builder, shown in the navigation or
not); another feature adds its page with ``register_page(...)`` before the
server starts. Each page module has ``page(ctx) -> Viewable``; ``ctx`` (an
``AppContext``) holds the store and settings the pages share.
"""

from __future__ import annotations

import errno
import socket
import threading
from dataclasses import dataclass
from typing import Any, Callable

from dsagent.errors import DsagentError
from dsagent.panel_app.context import AppContext

__all__ = ["PageSpec", "PAGES", "register_page", "build_server", "origins_for"]


@dataclass(frozen=True)
class PageSpec:
    route: str  # "/runs"
    title: str  # shown in the navigation bar
    builder: Callable[[AppContext], Any]  # page(ctx) -> a Panel viewable, called once per browser session
    in_nav: bool = True


def _builtin_pages() -> list[PageSpec]:
    from dsagent.panel_app import artifact_page, artifacts_page, chat_page, overview, run_page, runs

    return [
        PageSpec("/", "Overview", overview.page),
        PageSpec("/runs", "Runs", runs.page),
        PageSpec("/run", "Run", run_page.page, in_nav=False),
        PageSpec("/artifacts", "Artifacts", artifacts_page.page),
        PageSpec("/artifact", "Artifact", artifact_page.page, in_nav=False),
        PageSpec("/chat", "Chat", chat_page.page),
    ]


#: pages added by other features (Schedules, Sweeps, Chat ...), served after the built-in ones
PAGES: list[PageSpec] = []


def register_page(spec: PageSpec) -> None:
    """Add a page to every dashboard server started after this call."""
    if any(p.route == spec.route for p in PAGES):
        raise ValueError(f"a page is already registered at {spec.route}")
    PAGES.append(spec)


def origins_for(address: str, port: int) -> list[str]:
    """Websocket origins the server accepts: the names it is reached by, nothing else."""
    hosts = {"localhost", "127.0.0.1"}
    if address in ("0.0.0.0", "::", ""):
        hosts |= {socket.gethostname(), socket.getfqdn()}
    else:
        hosts.add(address)
    return sorted(f"{h}:{port}" for h in hosts)


def build_server(ctx: AppContext, *, port: int, address: str, cookie_secret: str, websocket_origins: list[str]):
    """A started-but-not-running Bokeh server (call ``.io_loop.start()``); port problems become DsagentError."""
    import panel as pn

    from dsagent.panel_app import rest, widgets
    from dsagent.panel_app.auth import make_auth_provider

    pn.extension("tabulator", notifications=False)
    pages = [*_builtin_pages(), *PAGES]
    widgets.NAV[:] = [(p.route, p.title) for p in pages if p.in_nav]
    routes = {p.route.lstrip("/") or "/": (lambda spec=p: spec.builder(ctx)) for p in pages}
    extra: dict[str, Any] = {}
    if ctx.credentials is not None:
        extra["auth_provider"] = make_auth_provider(ctx.credentials)
    try:
        server = pn.serve(
            routes, port=port, address=address, websocket_origin=websocket_origins, show=False, start=False,
            title="dsagent", verbose=False, extra_patterns=rest.routes(ctx), cookie_secret=cookie_secret,
            # uploads (the Chat page's datasets) travel over the websocket: room for the largest one allowed, base64-encoded
            websocket_max_message_size=max(20 * 2**20, int(ctx.settings.dashboard_upload_limit * 1.4) + 2**20), **extra,
        )
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise DsagentError(f"port {port} on {address} is already in use", hint=f"pick another one: dsagent serve --port {port + 1}") from None
        raise DsagentError(f"cannot listen on {address}:{port}: {exc.strerror or exc}", hint="check --address and --port") from None
    # a daemon thread: Ctrl-C must not wait for an import that takes seconds on a busy machine
    threading.Thread(target=rest.warm_up, name="nbconvert-warm-up", daemon=True).start()
    return server
