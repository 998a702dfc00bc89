"""The dashboard's one frame: a panel-material-ui ``Page`` with the app bar, the navigation drawer and the page's title.

Every page returns ``page_frame(active, title, *body, actions=...)``::

    return page_frame("/runs", "Runs", card(filters, table), actions=[refresh_button], user=current_user())

- The app bar: the product name (a link to the Overview), who is logged in with "log out", the theme toggle.
- The drawer: one entry per page in ``NAV`` (icon + label, filled by app.py from its page list), the active
  one highlighted. At a phone's width it is a temporary drawer behind the app bar's menu button.
- The main area: the page's title with its actions on one row (they wrap under it when narrow), then the body
  (use ``components.card`` for content blocks).

Light and dark follow the browser: ``templates/page.html`` sets ``<html data-theme>`` before anything renders
from the stored choice (``localStorage``), else the OS's ``prefers-color-scheme``; Material UI components
follow that attribute. The toggle stores the choice (``_REMEMBER_THEME``). A cookie carries the mode to the
server, so a session's components are built in the right mode (``start_session``) and the browser does not
repaint them after load.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import panel as pn
import panel_material_ui as pmui

from dsagent.panel_app import untrusted

__all__ = ["NavItem", "NAV", "THEME_COOKIE", "NARROW_COOKIE", "page_frame", "page_header", "start_session", "session_dark"]


@dataclass(frozen=True)
class NavItem:
    route: str  # "/runs"
    title: str  # "Runs"
    icon: str  # a Material icon name ("list", "image" ...)


#: the drawer's entries, in order; app.py fills it from its page list
NAV: list[NavItem] = []

THEME_COOKIE = "dsagent_theme"  # "dark" or "light": set by templates/page.html and the toggle
NARROW_COOKIE = "dsagent_narrow"  # "1" below 600 px: the drawer starts closed
TEMPLATE = Path(__file__).parent / "templates" / "page.html"
SIDEBAR_PX = 210
PHONE_PX = 600  # Material UI's "sm" breakpoint: below it the drawer is temporary (over the page)

# The toggle changed the page's mode: keep the choice in this browser, and tell the rest of the page (the
# components follow <html data-theme>, the status colours in page.html too, the server reads the cookie).
# A change that only follows <html data-theme> (the OS's mode, at load) is not a choice: nothing is stored.
_REMEMBER_THEME = """
const model = cb_obj.data != null ? cb_obj.data : cb_obj
const mode = model.dark_theme ? "dark" : "light"
const root = document.documentElement
if (root.dataset.theme !== mode) {
  try { localStorage.setItem("dsagent-theme", mode) } catch (e) {}
  root.dataset.theme = mode
  root.style.colorScheme = mode
  document.cookie = "dsagent_theme=" + mode + "; SameSite=Lax"
}
"""

# A narrow window's first visit, when its user agent did not say "phone" (no cookie yet, so the server built the
# drawer open): close the drawer once the page is there. Later visits send the cookie and start closed.
_CLOSE_DRAWER_ON_PHONES = f"""
if (window.innerWidth < {PHONE_PX}) {{
  for (const view of Bokeh.index.roots) {{
    const data = view.model.data
    if (data != null && data.sidebar_open) {{ data.sidebar_open = false }}
  }}
}}
"""

_NAV_CSS = """
nav {display: flex; flex-direction: column}
.ds-nav {display: flex; align-items: center; gap: 16px; padding: 10px 16px; text-decoration: none; border-left: 4px solid transparent;
  color: var(--mui-palette-text-primary, #222); font: var(--mui-font-body1, 400 1rem/1.5 Roboto, sans-serif)}
.ds-nav svg {color: var(--mui-palette-text-secondary, #555)}
.ds-nav:hover {background: color-mix(in srgb, var(--mui-palette-text-primary, #000) 6%, transparent)}
.ds-nav.ds-active {border-left-color: var(--mui-palette-primary-main, #1976d2); font-weight: 700;
  background: color-mix(in srgb, var(--mui-palette-primary-main, #1976d2) 10%, transparent)}
.ds-nav.ds-active svg {color: var(--mui-palette-primary-main, #1976d2)}
"""
_MAIN_STYLES = {"padding": "8px 16px 24px 16px", "max-width": "100%", "box-sizing": "border-box"}
_HEADER_CSS = """
:host {min-width: 0}
h1 {font-size: 1.5rem; font-weight: 500; line-height: 1.3; margin: 6px 0; overflow-wrap: anywhere}
.ds-account {color: inherit; font-size: 0.9rem; white-space: nowrap}
.ds-account a {color: inherit}
"""


def _cookie(name: str) -> str | None:
    cookies = pn.state.cookies or {}
    value = cookies.get(name)
    return value if isinstance(value, str) else None


def _narrow() -> bool:
    """Whether the browser's window is a phone's: its cookie once the page template has set it, else what the
    user agent says (browsers on phones put "Mobi" in it), so a phone's first visit starts with the drawer shut."""
    cookie = _cookie(NARROW_COOKIE)
    if cookie is not None:
        return cookie == "1"
    return "Mobi" in ((pn.state.headers or {}).get("User-Agent") or "")


def session_dark() -> bool:
    """Whether this browser shows the dark theme (its cookie; False before the browser has told us)."""
    return _cookie(THEME_COOKIE) == "dark"


def start_session() -> None:
    """Called before a page is built: this session's components are made in the browser's mode (Panel keeps
    ``config.theme`` per session), so Material UI and Panel widgets render dark at once when the browser is.

    The page's head also asks for panel-material-ui's module at once (``<link rel="modulepreload">``): Panel
    imports it only once BokehJS has built the document, so without the hint the browser fetched and compiled
    its 1.4 MB after everything else, and every page waited for that before showing the frame."""
    pn.config.theme = "dark" if session_dark() else "default"
    doc = pn.state.curdoc
    if doc is not None:
        doc.template_variables["dsagent_module_preload"] = pmui.Page._render_esm(compiled=True, server=True)


def page_header(title: str, actions: Iterable[Any] = ()) -> pn.FlexBox:
    """The page's title and its actions on one row; at a narrow width the actions wrap below the title."""
    heading = pn.pane.HTML(f"<h1>{untrusted.text(title)}</h1>", stylesheets=[_HEADER_CSS], margin=0,
                           styles={"flex": "1 1 240px", "min-width": "0"})
    return pn.FlexBox(heading, *actions, align_items="center", flex_wrap="wrap", gap="8px", sizing_mode="stretch_width",
                      margin=(4, 0))


def _navigation(active: str) -> pn.pane.HTML:
    """The drawer's links: plain HTML (a Material UI list would be one more React root to build on every load)."""
    from dsagent.panel_app.components import icon

    def link(item: NavItem) -> str:
        here = item.route == active
        attributes = "class='ds-nav ds-active' aria-current='page'" if here else "class='ds-nav'"
        return (f"<a {attributes} href='./{untrusted.text(item.route.lstrip('/'))}'>{icon(item.icon, 22)}"
                f"<span>{untrusted.text(item.title)}</span></a>")

    links = "".join(link(item) for item in NAV)
    return pn.pane.HTML(f"<nav>{links}</nav>", stylesheets=[_NAV_CSS], sizing_mode="stretch_width", margin=(8, 0))


def _account(user: str | None) -> list[Any]:
    if not user:
        return []
    return [pn.pane.HTML(f"<span class='ds-account'>{untrusted.text(user)} · <a href='./logout'>log out</a></span>",
                         stylesheets=[_HEADER_CSS], margin=(0, 8), styles={"margin-left": "auto"})]


def page_frame(active: str, title: str, *body: Any, actions: Iterable[Any] = (), user: str | None = None) -> pmui.Page:
    """The page: app bar, drawer with ``active`` (a route) highlighted, ``title`` with ``actions``, then ``body``."""
    main = pn.Column(page_header(title, actions), *body, sizing_mode="stretch_width", styles=_MAIN_STYLES)
    page = pmui.Page(
        title="dsagent", site_url="./", main=[main], sidebar=[_navigation(active)], header=_account(user),
        sidebar_width=SIDEBAR_PX, sidebar_resizable=False, sidebar_open=not _narrow(),
        # no busy bar: Panel counts the pages' own polling as busy, and each page shows its own loading states
        busy_indicator=None, theme_toggle=True, dark_theme=session_dark(), template=str(TEMPLATE), meta_title=f"{title} · dsagent",
    )
    page.jscallback(dark_theme=_REMEMBER_THEME)
    doc = pn.state.curdoc
    if doc is not None and _cookie(NARROW_COOKIE) is None:
        from bokeh.models import CustomJS

        doc.js_on_event("document_ready", CustomJS(code=_CLOSE_DRAWER_ON_PHONES))
    return page
