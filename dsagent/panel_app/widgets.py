"""Pieces every page uses, written once: the tables, links, the "busy" notice, polling, and the artifact preview
(by kind). The frame is ``layout.page_frame``, the status chips and other shared components are in
``components``, number and time formats in ``formats``; the names pages imported from here before stay."""

from __future__ import annotations

import functools
import json
import posixpath
import re
from typing import TYPE_CHECKING, Any, Awaitable, Callable, ClassVar

import logging
import weakref
from dataclasses import dataclass
from datetime import date, datetime, time as dtime, timedelta, timezone

import panel as pn

from dsagent.panel_app import components, formats, untrusted
from dsagent.panel_app.layout import NAV, page_frame
from dsagent.errors import DsagentError, NotFound, StoreLocked

if TYPE_CHECKING:
    from dsagent.artifacts.models import Artifact
    from dsagent.panel_app.context import AppContext

log = logging.getLogger(__name__)

__all__ = ["Missing", "Table", "date_range_bounds", "page_frame", "status_badge", "run_link", "artifact_link", "query_arg", "Notice", "artifact_preview",
           "human_size", "duration_text", "time_text", "NAV", "html_pane", "image_tile", "Poller", "preloaded"]

#: a page's first data, read before its document is built (app.py's preload handler), by document
PRELOADED: "weakref.WeakKeyDictionary[Any, Any]" = weakref.WeakKeyDictionary()


class Table(pn.widgets.Tabulator):
    """Panel's Tabulator, shown as soon as it is built: its stylesheets inline, without Font Awesome.

    Panel's Tabulator view stays hidden until every ``<link>`` stylesheet in its
    shadow root has loaded (Panel's loading.css, the theme's default.css and
    native.css, Tabulator's theme), then redraws the whole table; a second
    redraw follows after the first resize. Those stylesheets (~34 KB, shipped
    with Panel) go in as ``<style>`` text instead: nothing to wait for, so the
    table is visible when its first render ends and one full redraw fewer comes
    before the rows show (bench/dashboard.py, docs/architecture.md "First
    paint"). Font Awesome (~100 KB, icons our tables never show) is left out.

    Rows have a set height (Tabulator's ``rowHeight``): otherwise Tabulator
    inserts each row and reads its height back, a forced layout per row, in its
    first render and again in each redraw.
    """

    _stylesheets: ClassVar[list[str]] = []
    #: px: one line of text or a status chip (what Tabulator measured for every row of the Runs and Artifacts tables)
    ROW_HEIGHT: ClassVar[int] = 29

    def __init__(self, value: Any = None, **params: Any) -> None:
        configuration = dict(params.pop("configuration", None) or {})
        configuration.setdefault("rowHeight", self.ROW_HEIGHT)
        # the cells' chips, links and times look as they do everywhere else
        params["stylesheets"] = [components.CSS, TABLE_CSS, *params.get("stylesheets", [])]
        super().__init__(value, configuration=configuration, **params)

    def _process_param_change(self, params: dict[str, Any]) -> dict[str, Any]:
        params = super()._process_param_change(params)
        if "stylesheets" in params:
            params["stylesheets"] = [_inline_panel_css(sheet) for sheet in params["stylesheets"]]
        return params


def _inline_panel_css(sheet: Any) -> Any:
    """A Panel-shipped ``ImportedStyleSheet`` as an ``InlineStyleSheet`` of the same CSS; anything else as it is."""
    from bokeh.models import ImportedStyleSheet, InlineStyleSheet

    if not isinstance(sheet, ImportedStyleSheet):
        return sheet
    css = _panel_css_text(sheet.url)
    return sheet if css is None else InlineStyleSheet(css=css)


@functools.lru_cache(maxsize=32)
def _panel_css_text(url: str) -> str | None:
    """The text of a stylesheet in Panel's dist folder, its relative ``url(../x)`` made relative to the page."""
    from panel.io.resources import CDN_DIST, DIST_DIR, LOCAL_DIST

    path = url.split("?", 1)[0]
    for prefix in (CDN_DIST, LOCAL_DIST, "./" + LOCAL_DIST, "/" + LOCAL_DIST):
        if path.startswith(prefix):
            relative = path[len(prefix):]
            break
    else:
        return None
    file = (DIST_DIR / relative).resolve()
    if DIST_DIR.resolve() not in file.parents or not file.is_file():
        return None
    folder = posixpath.dirname(relative)
    # inline CSS resolves url() against the page (/runs ...), not against the file's folder as a <link> does
    return re.sub(r"url\((['\"]?)(?!data:|https?:|/)([^'\")]+)\1\)",
                  lambda m: f"url({m.group(1)}{LOCAL_DIST}{posixpath.normpath(posixpath.join(folder, m.group(2)))}{m.group(1)})",
                  file.read_text(encoding="utf-8"))


def date_range_bounds(value: "tuple[date | None, date | None] | None") -> tuple[datetime | None, datetime | None]:
    """A date-range picker's value as the store's [since, until) in UTC: whole days, the end day included."""
    start, end = value or (None, None)
    since = datetime.combine(start, dtime.min, timezone.utc) if start else None
    until = datetime.combine(end, dtime.min, timezone.utc) + timedelta(days=1) if end else None
    return since, until


@dataclass(frozen=True)
class Missing:
    """What ``preloaded()`` returns when the page's preload found that its subject does not exist (NotFound):
    the page shows ``components.not_found_page`` instead of waiting for data that will never come."""

    message: str  # the store's own words: "no run with id 9999"


def preloaded() -> Any:
    """This session's preloaded data (``PageSpec.preload``), ``Missing`` if the preload raised NotFound, or None if
    there is none or it failed (a busy store: the page reads again after load)."""
    doc = pn.state.curdoc
    return PRELOADED.pop(doc, None) if doc is not None else None

#: the classes of the dashboard's HTML panes: the shared components' (chips, empty states ...), gallery tiles,
#: key/value tables; colours from the theme's variables (templates/page.html), so light and dark both read
CSS = components.CSS + """
.ds-tile {display: inline-block; margin: 6px; text-align: center; font-size: 0.8em; width: 200px; vertical-align: top;
  overflow-wrap: anywhere}
.ds-tile img {max-width: 200px; max-height: 150px; border: 1px solid var(--ds-border, #ddd); border-radius: 4px; background: white}
.ds-kv td {padding: 2px 12px 2px 0; vertical-align: top; overflow-wrap: anywhere}
"""

#: Tabulator in the theme's colours (light and dark): its bundled themes paint fixed whites and greys, with selectors
#: more specific than ours, hence the !important
TABLE_CSS = """
.tabulator, .tabulator .tabulator-tableholder, .tabulator .tabulator-tableholder .tabulator-table {
  background-color: var(--ds-surface, #fff) !important; color: var(--ds-text, #222) !important; border-color: var(--ds-border, #ddd) !important}
.tabulator .tabulator-header, .tabulator .tabulator-header .tabulator-col, .tabulator .tabulator-header .tabulator-col .tabulator-col-content {
  background-color: var(--ds-surface, #fff) !important; color: var(--ds-text, #222) !important; border-color: var(--ds-border, #ddd) !important}
.tabulator .tabulator-header {border-bottom: 1px solid var(--ds-border, #ddd) !important}
.tabulator-row, .tabulator-row.tabulator-row-odd {background-color: var(--ds-surface, #fff) !important; color: var(--ds-text, #222) !important;
  border-bottom: 1px solid var(--ds-border, #eee) !important}
.tabulator-row.tabulator-row-even {background-color: color-mix(in srgb, var(--ds-text, #000) 4%, var(--ds-surface, #fff)) !important}
.tabulator-row .tabulator-cell {border-right: none !important; color: var(--ds-text, #222)}
.tabulator-row.tabulator-selectable:hover {background-color: color-mix(in srgb, var(--ds-primary, #1565c0) 10%, var(--ds-surface, #fff)) !important}
"""


def html_pane(text: str = "", **kwargs: Any) -> pn.pane.HTML:
    """An HTML pane that knows the dashboard's classes (panes live in their own shadow DOM). Full width unless it
    is given a width (both together make Panel warn on every page load)."""
    if "width" not in kwargs:
        kwargs.setdefault("sizing_mode", "stretch_width")
    kwargs["stylesheets"] = [CSS, *kwargs.get("stylesheets", [])]
    return pn.pane.HTML(text, **kwargs)


def image_tile(artifact: "Artifact", caption: str, *, eager: bool = False) -> str:
    """A gallery tile; the thumbnail URL names the content (sha256), so a kept thumbnail is served without a store read."""
    loading = "eager" if eager else "lazy"  # the first row: fetched at once, not after layout decides it is visible
    return (f'<div class="ds-tile"><a href="./artifact?id={artifact.id}"><img loading="{loading}" '
            f'src="./api/artifacts/{artifact.id}/thumb?sha256={artifact.sha256}" '
            f'alt="{untrusted.text(artifact.name)}"></a><br>{untrusted.text(caption)}</div>')


def current_user() -> str | None:
    """Who opened this page: the signed ``dsagent_who`` cookie set at login (the login cookie itself is kept out
    of the page's session token, see auth.py), None without auth."""
    from tornado.web import decode_signed_value

    from dsagent.panel_app.auth import WHO_COOKIE

    raw, secret = (pn.state.cookies or {}).get(WHO_COOKIE), pn.config.cookie_secret
    if not raw or not secret:
        return None
    user = decode_signed_value(secret, WHO_COOKIE, raw)
    return user.decode("utf-8", "replace") if user else None


#: a run's status as a chip (one function for every page: ``components.status_chip``)
status_badge = components.status_chip


def run_link(run_id: int | None) -> str:
    return f'<a href="./run?id={int(run_id)}">{int(run_id)}</a>' if run_id is not None else ""


def artifact_link(artifact_id: int, text: str | None = None) -> str:
    return f'<a href="./artifact?id={int(artifact_id)}">{untrusted.text(text or str(artifact_id))}</a>'


def query_arg(name: str) -> str | None:
    values = pn.state.session_args.get(name) if pn.state.session_args else None
    return values[0].decode("utf-8", "replace") if values else None


human_size = formats.size
duration_text = formats.run_duration


def time_text(value) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else ""


class Poller:
    """Refresh a page once the browser has it, then every ``period_ms`` until ``stop()``.

    Not earlier: Panel drops the model changes made after the browser pulled the
    page's document but before its ``document_ready`` (the session does not count
    as connected yet). A refresh from a periodic callback that lands in that window
    is never shown, and the next one, finding the same data, does not send it
    again: the table stayed empty. So the first refresh runs from ``onload`` and
    the periodic callback starts after it.
    """

    def __init__(self, refresh: Callable[[], Awaitable[Any]], period_ms: int, *, first: bool = True) -> None:
        self.refresh = refresh
        self.period_ms = period_ms
        self.callback = None
        self.stopped = False
        self.first = first  # False: the page was built with preloaded data, the first refresh is the periodic one
        pn.state.onload(self._start)

    async def _start(self) -> None:
        if self.first:
            await self.refresh()
        if not self.stopped:
            self.callback = pn.state.add_periodic_callback(self.refresh, period=self.period_ms)

    def stop(self) -> None:
        self.stopped = True
        if self.callback is not None:
            self.callback.stop()
            self.callback = None


class Notice:
    """A line that says the store is busy (and the page retries) or what went wrong."""

    def __init__(self) -> None:
        self.pane = pn.pane.Alert("", alert_type="warning", visible=False, sizing_mode="stretch_width")
        self.missing = False  # the page's subject does not exist: stop polling

    def clear(self) -> None:
        self.pane.visible = False

    def show(self, text: str, kind: str = "warning") -> None:
        self.pane.object = text
        self.pane.alert_type = kind
        self.pane.visible = True

    async def guard(self, work: Callable[[], Awaitable[Any]]) -> bool:
        """Run one refresh; a busy store or an error shows here instead of breaking the page. True if it worked."""
        try:
            await work()
        except StoreLocked:
            self.show("The workspace database is busy (another dsagent process holds it); retrying…")
            return False
        except NotFound as exc:
            self.missing = True
            self.show(f"{untrusted.text(exc.message)}. {untrusted.text(exc.hint)}", "danger")
            return False
        except DsagentError as exc:
            self.show(untrusted.text(str(exc)), "danger")
            return False
        except Exception as exc:  # a bug or a vanished workspace: say so on the page, keep the server up
            log.warning("dashboard refresh failed", exc_info=True)
            self.show(f"Could not read the workspace: {untrusted.text(type(exc).__name__)}: {untrusted.text(str(exc))}", "danger")
            return False
        self.clear()
        return True


def artifact_preview(ctx: "AppContext", artifact: "Artifact", data: bytes | None) -> Any:
    """A viewer for one artifact by kind; ``data`` is its bytes when the kind needs them here (text, json, table), None
    when it is too big to preview. Readable in both themes: images on a white frame (plots are drawn for white paper),
    HTML and notebooks in their sandboxed iframe, framed; wide tables and long lines scroll inside their card."""
    from dsagent.panel_app.layout import session_dark

    url = f"./api/artifacts/{artifact.id}"
    if artifact.kind == "image" or artifact.mime == "image/svg+xml":  # an SVG through <img>: its scripts never run in this page
        return html_pane(f"<div class='ds-image-frame'><img src='{url}' alt='{untrusted.text(artifact.name)}'></div>",
                         stylesheets=[_PREVIEW_CSS])
    if artifact.kind in ("html", "notebook"):
        return sandboxed_iframe(f"{url}/preview")
    textual = artifact.kind in ("table", "text", "json") or artifact.mime.startswith("text/")
    if textual and data is None:
        return html_pane(components.empty_state("Too big to preview here", f"It is {formats.size(artifact.size)}: download it with "
                                                "the button at the top of the page."))
    if artifact.kind == "table" and data is not None:
        frame = _table(artifact, data)
        if frame is not None:  # fit_data_table: columns as wide as their data, the table scrolls sideways inside its card
            return Table(untrusted.table(frame), pagination="remote", page_size=25, disabled=True, sizing_mode="stretch_width",
                         layout="fit_data_table", name="table-preview", stylesheets=[_PAGINATION_CSS])
    if data is not None and textual:
        text = data[:200_000].decode("utf-8", "replace")
        if artifact.kind == "json":
            try:
                return pn.pane.JSON(json.loads(text), depth=3, sizing_mode="stretch_width", theme="dark" if session_dark() else "light",
                                    styles={"overflow-x": "auto"})
            except ValueError:
                pass
        return html_pane(f"<pre class='ds-text-preview'>{untrusted.text(text)}</pre>", stylesheets=[_PREVIEW_CSS])
    return html_pane(components.empty_state(f"No preview for {artifact.mime}", "Download it with the button at the top of the page."))


_PREVIEW_CSS = """
.ds-image-frame {background: #fff; border: 1px solid var(--ds-border); border-radius: 8px; padding: 12px; text-align: center}
.ds-image-frame img {max-width: 100%; height: auto; vertical-align: middle}
.ds-text-preview {white-space: pre-wrap; overflow-wrap: anywhere; max-height: 640px; overflow: auto; margin: 0; padding: 10px 12px;
  background: var(--ds-code-bg); border-radius: 6px; font-size: 0.85rem}
"""


#: the pager under a previewed table in the theme's colours (Tabulator's theme paints it white)
_PAGINATION_CSS = """
.tabulator .tabulator-footer {background-color: var(--ds-surface, #fff) !important; color: var(--ds-text, #222) !important;
  border-top: 1px solid var(--ds-border, #ddd) !important}
.tabulator .tabulator-footer .tabulator-page {background: transparent !important; color: var(--ds-text, #222) !important;
  border: 1px solid var(--ds-border, #ddd) !important; border-radius: 4px}
.tabulator .tabulator-footer .tabulator-page.active {color: var(--ds-primary, #1565c0) !important; font-weight: 600}
.tabulator .tabulator-footer .tabulator-page:disabled {opacity: 0.45}
"""


def sandboxed_iframe(src: str, height: int = 700) -> pn.pane.HTML:
    # sandbox without allow-same-origin: the content runs in an opaque origin, cannot read this page or its cookies.
    # Framed, on white in both themes: a notebook or an HTML artifact brings its own (light) page.
    return pn.pane.HTML(
        f'<iframe src="{src}" sandbox="allow-scripts" referrerpolicy="no-referrer" '
        f'style="width:100%;height:{height - 10}px;border:1px solid var(--ds-border, #ddd);border-radius:8px;background:#fff;box-sizing:border-box"></iframe>',
        sizing_mode="stretch_width", height=height,
    )


def _table(artifact: "Artifact", data: bytes):
    import io

    import pandas as pd

    try:
        if "parquet" in artifact.mime or artifact.name.endswith(".parquet"):
            return pd.read_parquet(io.BytesIO(data))
        if "csv" in artifact.mime or artifact.name.endswith(".csv"):
            return pd.read_csv(io.BytesIO(data))
    except Exception:  # a broken file: no table preview, the download still works
        return None
    return None
