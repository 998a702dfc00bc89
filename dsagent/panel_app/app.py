"""The dashboard server: Panel pages and the REST routes on one Bokeh/Tornado server.

``PAGES`` lists the pages (route, title, builder, shown in the navigation or
not); another feature adds its page with ``register_page(...)`` before the
server starts. Each page module has ``page(ctx) -> Viewable``; ``ctx`` (an
``AppContext``) holds the store and settings the pages share.
"""

from __future__ import annotations

import errno
import gc
import logging
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from dsagent.errors import DsagentError
from dsagent.panel_app.context import AppContext

log = logging.getLogger(__name__)

__all__ = ["PageSpec", "PAGES", "register_page", "build_server", "origins_for"]


@dataclass(frozen=True)
class PageSpec:
    route: str  # "/runs"
    title: str  # shown in the navigation bar
    builder: Callable[[AppContext], Any]  # page(ctx) -> a Panel viewable, called once per browser session
    in_nav: bool = True
    #: preload(ctx, query args) -> the page's first data: blocking store reads, run in a worker thread before
    #: the page is built; the builder takes it with ``widgets.preloaded()`` (None if it failed: refresh on load)
    preload: Callable[[AppContext, dict[str, str]], Any] | None = None
    #: the Panel extensions whose JavaScript the page loads (e.g. ("tabulator",)); None: every one the server knows.
    #: A page that declares none does not fetch or evaluate Tabulator and luxon (~0.5 MB) on each load.
    extensions: tuple[str, ...] | None = None
    #: Panel's Location model (pn.state.location, to read or set the address from Python); off, the page
    #: builds one model fewer per session
    location: bool = True
    #: the icon next to the title in the navigation drawer: a name in ``components.icon``'s set ("page" if unknown)
    icon: str = "page"


def _builtin_pages() -> list[PageSpec]:
    from dsagent.panel_app import (artifact_page, artifacts_page, chat_page, compare_page, notebook_page, notebooks_page, overview, run_page,
                                   runs, schedules_page)

    table = ("tabulator",)  # the pages with a Tabulator (widgets.Table, artifact previews, batch views)
    return [
        PageSpec("/", "Overview", overview.page, preload=overview.preload, extensions=(), location=False, icon="dashboard"),
        PageSpec("/runs", "Runs", runs.page, preload=runs.preload, extensions=table, icon="runs"),
        PageSpec("/run", "Run", run_page.page, in_nav=False, preload=run_page.preload, extensions=table, location=False),
        PageSpec("/artifacts", "Artifacts", artifacts_page.page, preload=artifacts_page.preload, extensions=(), icon="artifacts"),
        PageSpec("/artifact", "Artifact", artifact_page.page, in_nav=False, preload=artifact_page.preload, extensions=table, location=False),
        PageSpec("/notebooks", "Notebooks", notebooks_page.page, extensions=table, location=False, icon="notebooks"),
        PageSpec("/notebook", "Notebook", notebook_page.page, in_nav=False, extensions=table),
        PageSpec("/compare", "Compare runs", compare_page.page, in_nav=False, preload=compare_page.preload, extensions=(), location=False),
        PageSpec("/chat", "Chat", chat_page.page, preload=chat_page.preload, icon="chat"),
        PageSpec("/schedules", "Schedules", schedules_page.page, extensions=(), location=False, icon="schedules"),
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


def build_server(ctx: AppContext, *, port: int, address: str, cookie_secret: str, websocket_origins: list[str],
                 allowed_hosts: list[str] | None = None):
    """A started-but-not-running Bokeh server (call ``.io_loop.start()``); port problems become DsagentError."""
    import panel as pn

    from dsagent.panel_app import csp, hosts, layout, rest
    from dsagent.panel_app.auth import TOKEN_EXCLUDED_COOKIES, TOKEN_EXCLUDED_HEADERS, make_auth_provider

    pn.extension("tabulator", notifications=False)
    _native_module_imports()
    _trim_page_scripts()
    pages = [*_builtin_pages(), *PAGES]
    layout.NAV[:] = [layout.NavItem(p.route, p.title, p.icon) for p in pages if p.in_nav]
    routes = _applications(ctx, pages)
    extra: dict[str, Any] = {}
    if ctx.credentials is not None:
        extra["auth_provider"] = make_auth_provider(ctx.credentials, session_days=ctx.settings.dashboard_session_days)
    try:
        server = pn.serve(
            routes, port=port, address=address, websocket_origin=websocket_origins, show=False, start=False,
            title="dsagent", verbose=False, extra_patterns=rest.routes(ctx), cookie_secret=cookie_secret,
            # uploads (the Chat page's datasets) travel over the websocket: room for the largest one allowed, base64-encoded
            websocket_max_message_size=max(20 * 2**20, int(ctx.settings.dashboard_upload_limit * 1.4) + 2**20),
            # the session token is in every page, where script can read it: no login cookie or credential header in it
            exclude_cookies=TOKEN_EXCLUDED_COOKIES, exclude_headers=TOKEN_EXCLUDED_HEADERS, **extra,
        )
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise DsagentError(f"port {port} on {address} is already in use", hint=f"pick another one: dsagent serve --port {port + 1}") from None
        raise DsagentError(f"cannot listen on {address}:{port}: {exc.strerror or exc}", hint="check --address and --port") from None
    _quiet_tab_closes(server)
    _ping_only_open_tabs(server)
    # Bokeh's Server keeps its Tornado application in _tornado; it has no public accessor
    csp.install(server._tornado)
    # the names of the websocket origins are names the server is reached by, too (a proxy's)
    guard = hosts.HostGuard(address, [*(allowed_hosts or []), *(o.rsplit(":", 1)[0] for o in websocket_origins)])
    hosts.install(server._tornado, guard)
    # jupyter_client before any other thread imports it: the warm-up below (nbconvert -> nbclient -> jupyter_client)
    # racing a hand-off's backend import on the event loop made Python hand one of them a half-imported module
    # (ImportError "partially initialized module", an HTTP 500); ~0.1 s of start-up
    import jupyter_client  # noqa: F401
    # a daemon thread: Ctrl-C must not wait for an import that takes seconds on a busy machine
    threading.Thread(target=rest.warm_up, name="nbconvert-warm-up", daemon=True).start()
    # Everything imported so far (Panel, Bokeh, pandas, DuckDB: ~170,000 objects) lives as long as the server: out
    # of the collector's reach, a full collection (Panel runs one after sessions close, Python whenever enough
    # objects were made) no longer stops the event loop for ~0.1 s in the middle of another page's load.
    gc.freeze()
    return server


STATIC_DIR = Path(__file__).parent / "static"


class _TabClosed(logging.Filter):
    """Drops the warning Bokeh and Panel log for each update that was on its way to a browser tab that had just
    closed: an everyday event (a reload, a closed tab, a link followed while the page polled), not a fault."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "as connection was closed" not in record.getMessage()


def _quiet_tab_closes(server: Any) -> None:
    """No log lines and no tracebacks when a tab closes while the server writes to it.

    Panel writes a session's updates as futures it awaits later; when the tab has gone meanwhile, the session is
    destroyed first and those futures' ``WebSocketClosedError`` is never retrieved, so asyncio printed "Task
    exception was never retrieved" with two tracebacks per closed tab. Any other unretrieved exception is
    still reported as before."""
    import warnings

    from bokeh.util.warnings import BokehUserWarning
    from tornado.websocket import WebSocketClosedError

    for name in ("bokeh.server.views.ws", "panel.io.document"):
        logging.getLogger(name).addFilter(_TabClosed())
    # panel-material-ui's theming appends a stylesheet to each Tabulator in the browser; the list it sends back
    # names the table's stylesheets the server already has, and Bokeh (which then uses the ones it has) warns once
    # per stylesheet whenever a table joins a page after load (an artifact's table preview does)
    warnings.filterwarnings("ignore", message="reference already known", category=BokehUserWarning)
    loop = server.io_loop.asyncio_loop
    previous = loop.get_exception_handler()

    def handler(loop: Any, context: dict[str, Any]) -> None:
        if isinstance(context.get("exception"), WebSocketClosedError):
            return
        if previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handler)


def _ping_only_open_tabs(server: Any) -> None:
    """Bokeh's keep-alive job (a ping to every tab every 37 s) no longer lets go of a tab's session while that tab's
    websocket handler is still at work.

    A tab's websocket handles one message at a time, and a message that changes the page waits for the page's
    document lock (held, say, by a poll reading the store). When the tab closes meanwhile, its socket is closed but the
    handler is still inside that message; Bokeh's job found the socket closing and detached the connection from its
    session at once, so the waiting message, and the handler's own close after it, met a connection without a session:
    ``AssertionError`` tracebacks in the server log ("error handling message ... PATCH-DOC"). The handler detaches the
    connection itself when it closes (``WSHandler.on_close``), after its last message: the job leaves a closing socket
    to it and pings the open ones."""
    from tornado.websocket import WebSocketClosedError

    bokeh_app = server._tornado  # Bokeh's Tornado application: its clients and its ping job have no public accessor
    job = getattr(bokeh_app, "_ping_job", None)
    if job is None:
        return

    def keep_alive() -> None:
        for connection in list(bokeh_app._clients):
            websocket = getattr(connection._socket, "ws_connection", None)
            if websocket is None or websocket.is_closing():
                continue  # closing: its handler's on_close lets go of the session
            try:
                connection.send_ping()
            except WebSocketClosedError:  # closed since the check: the same
                continue

    job.callback = keep_alive


def _native_module_imports() -> None:
    """es-module-shims out of every page, ``static/esm_import.js`` (the browser's own dynamic import) in.

    Panel loads its ESM components (the panel-material-ui frame every page has) through ``importShim``. The
    shim's shim mode fetched and rewrote each module and probed the browser with inline scripts, which the
    pages' Content-Security-Policy refuses (and which cost tens of milliseconds of the main thread on every
    load); panel-material-ui is one bundled module without import maps, which native ``import()`` loads."""
    from bokeh.embed.bundle import extension_dirs
    from panel.models.esm import ReactiveESM

    ReactiveESM.__javascript_raw__ = []
    extension_dirs["dsagent"] = STATIC_DIR


def _trim_page_scripts() -> None:
    """Changes to the ``<script>`` and stylesheet lists of every page (Panel's ``Resources.js_files``, ``css_files``).

    - No bokeh-gl: WebGL for Bokeh plots, and the dashboard draws none (~190 KB evaluated per page load).
    - Panel's bundled libraries (Tabulator, luxon) get Panel's version in their URL, as its own panel.min.js
      has: a versioned static URL is cached for good, so a later page uses them from the cache instead of
      asking the server first (a round trip that held back every script after them, as scripts run in order).
    - ``static/esm_import.js`` first (``_native_module_imports``), versioned by its content.
    - The stylesheet list is worked out once per set of extensions, not on every page request: Panel asks each
      of panel-material-ui's ~150 component classes (and their base classes) for its stylesheets, 30 ms of the
      server's time per page load (traced), for a list that changes only when a new component class is imported.
    """
    import hashlib

    import param
    from panel import __version__
    from panel.io.resources import LOCAL_DIST, Resources
    from panel.io.state import state
    from panel.reactive import ReactiveCustomBase

    listed = Resources.js_files
    if getattr(listed.fget, "_dsagent_trimmed", False):
        return
    shim = STATIC_DIR / "esm_import.js"
    shim_url = f"static/extensions/dsagent/{shim.name}?v={hashlib.sha256(shim.read_bytes()).hexdigest()[:16]}"

    def js_files(self) -> list[str]:
        files = [shim_url]
        for url in listed.fget(self):
            if "/bokeh-gl" in url:
                continue
            if LOCAL_DIST + "bundled/" in url and "?" not in url:
                url = f"{url}?v={__version__}"
            files.append(url)
        return files

    js_files._dsagent_trimmed = True  # type: ignore[attr-defined]
    Resources.js_files = property(js_files)

    stylesheets = Resources.css_files
    known: dict[tuple, list[str]] = {}

    def css_files(self) -> list[str]:
        import panel as pn

        key = (self.mode, state.rel_path, tuple(state._extensions or ()), len(param.concrete_descendents(ReactiveCustomBase)),
               pn.config.design, tuple(pn.config.css_files))
        if key not in known:
            known[key] = stylesheets.fget(self)
        return list(known[key])

    Resources.css_files = property(css_files)


def _page_builder(ctx: AppContext, spec: PageSpec) -> Callable[[], Any]:
    import panel as pn
    from panel import __version__

    from dsagent.panel_app import layout

    def build() -> Any:
        doc = pn.state.curdoc
        if doc is not None:
            # Panel's icon as a versioned static file, cached for good: the default ./favicon.ico has no cache headers,
            # so every page load fetched it (16 KB) from the server while the page's websocket was connecting
            doc.template_variables.setdefault("app_favicon", f"static/extensions/panel/images/favicon.ico?v={__version__}")
        if spec.extensions is not None and doc is not None:
            # what pn.extension(*names) records when called in a session (the page's scripts list only these), without
            # its side effects: it appends to a process-wide list on every call, i.e. on every page load
            pn.state._extensions_[doc] = list(spec.extensions)
        layout.start_session()
        return spec.builder(ctx)

    return build


def _preload_handler(ctx: AppContext, preload: Callable[[AppContext, dict[str, str]], Any]):
    """A Bokeh handler that reads a page's first data before Bokeh builds the page's document.

    Bokeh awaits every handler's ``on_session_created`` before it builds the
    document, so the read runs in a worker thread (never on the event loop) and
    its result is in the document the browser first receives: the page shows its
    data on first paint, without a second round trip after the page has loaded
    (and without sending rows to a Tabulator still being built, which drops them).
    """
    from bokeh.application.handlers.handler import Handler

    from dsagent.errors import NotFound
    from dsagent.panel_app import widgets

    class PreloadHandler(Handler):
        def modify_document(self, doc) -> None:
            pass  # the page's own handler builds it

        async def on_session_created(self, session_context) -> None:
            request = session_context.request
            args = {k: v[0].decode("utf-8", "replace") for k, v in (request.arguments if request else {}).items() if v}
            try:
                widgets.PRELOADED[session_context._document] = await ctx.read(preload, ctx, args)
            except NotFound as exc:  # the address names nothing: the page says so (components.not_found_page)
                widgets.PRELOADED[session_context._document] = widgets.Missing(exc.message)
            except Exception:  # a busy store, a bad id ...: the page's first refresh reads again and says what is wrong
                log.debug("preload of %s failed", request and request.path, exc_info=True)

    return PreloadHandler()


def _applications(ctx: AppContext, pages: list[PageSpec]) -> dict[str, Any]:
    """Panel's Bokeh applications for the pages, each with its preload handler when it has one."""
    from panel.io.application import build_applications

    apps = {}
    for spec in pages:
        apps.update(build_applications({spec.route: _page_builder(ctx, spec)}, title="dsagent", location=spec.location))
        if spec.preload is not None:
            apps[spec.route].add(_preload_handler(ctx, spec.preload))
    return apps
