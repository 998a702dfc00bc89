"""The dashboard's one frame: an app bar, a navigation drawer, the page's title row, then the page.

Every page returns ``page_frame(active, title, *body, actions=...)``::

    return page_frame("/runs", "Runs", card(filters, table), actions=[refresh_button], user=current_user())

- The app bar: the product name (a link to the Overview), who is logged in with "log out", the theme toggle.
- The drawer: one entry per page in ``NAV`` (icon + label, filled by app.py from its page list), the active
  one marked. Beside the page from 600 px up; below that (a phone) it slides in over the page from the app
  bar's menu button.
- The main area: the page's title with its actions on one row (they wrap under it when narrow), then the body
  (``components.card`` for content blocks).

Built from Panel layouts and HTML in Material's look, not from panel-material-ui's ``Page``: Bokeh lays a page
out only once every view of its document has rendered, and a Material UI component renders only after its
1.4 MB module is evaluated, so a ``Page`` (or any Material UI widget) in the first document held back the first
row of every table by 0.2-0.5 s (docs/architecture.md, "The frame"). Material UI widgets join a page after its
first paint instead (``after_first_paint``).

Light and dark follow the browser: ``templates/page.html`` sets ``<html data-theme>`` from the stored choice
(``localStorage``), else the OS's ``prefers-color-scheme``, and keeps a cookie with it, so the server builds
each session's components in that mode (``start_session``). The toggle stores the choice and reloads.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import panel as pn

from dsagent.panel_app import untrusted

__all__ = ["NavItem", "NAV", "THEME_COOKIE", "page_frame", "page_header", "start_session", "session_dark", "after_first_paint"]


@dataclass(frozen=True)
class NavItem:
    route: str  # "/runs"
    title: str  # "Runs"
    icon: str  # a name in components.icon's set ("runs", "artifacts" ...)


#: the drawer's entries, in order; app.py fills it from its page list
NAV: list[NavItem] = []

THEME_COOKIE = "dsagent_theme"  # "dark" or "light": set by templates/page.html and the toggle
TEMPLATE = Path(__file__).parent / "templates" / "page.html"
PHONE_PX = 600  # below this width the drawer is hidden behind the menu button
APP_BAR_PX = 56

# The toggle: the other mode, kept in this browser (localStorage) and told to the server (the cookie); then the
# page is built again in it, Panel's widgets included (their theme is chosen when they are made). The button is
# plain HTML in the app bar (no component of its own to build on every load): this wires it once the page is
# there, finding it through the shadow roots Panel renders into.
_WIRE_TOGGLE = """
const find = (root) => {
  const hit = root.querySelector(".ds-theme-toggle")
  if (hit != null) { return hit }
  for (const el of root.querySelectorAll("*")) {
    if (el.shadowRoot != null) { const found = find(el.shadowRoot); if (found != null) { return found } }
  }
  return null
}
const button = find(document)
if (button != null && !button.dataset.wired) {
  button.dataset.wired = "1"
  button.addEventListener("click", () => {
    const root = document.documentElement
    const mode = root.dataset.theme === "dark" ? "light" : "dark"
    try { localStorage.setItem("dsagent-theme", mode) } catch (e) {}
    document.cookie = "dsagent_theme=" + mode + "; SameSite=Lax"
    root.dataset.theme = mode
    window.location.reload()
  })
}
"""

_ICON = ('<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24" width="22" height="22" fill="none" stroke="currentColor" '
         'stroke-width="2" stroke-linecap="round" stroke-linejoin="round" aria-hidden="true">{body}</svg>')
_MOON = '<path d="M20 14.5A8 8 0 0 1 9.5 4a8 8 0 1 0 10.5 10.5z"/>'
_SUN = ('<circle cx="12" cy="12" r="4"/><path d="M12 2.5v2M12 19.5v2M4.6 4.6l1.4 1.4M18 18l1.4 1.4M2.5 12h2M19.5 12h2'
        'M4.6 19.4L6 18M18 6l1.4-1.4"/>')
_MENU = '<path d="M4 7h16M4 12h16M4 17h16"/>'
DRAWER_PX = 220

# The app bar and the drawer are one HTML pane: the drawer is fixed at the left under the bar from 600 px up, and
# below that slides in over the page from the menu button (a checkbox and its labels: no script).
_BAR_CSS = f"""
:host {{color: #fff}}
.ds-bar {{display: flex; align-items: center; gap: 4px; height: {APP_BAR_PX}px; padding: 0 8px 0 4px; box-sizing: border-box;
  background: var(--ds-appbar, #0b5cab); box-shadow: 0 2px 4px rgba(0,0,0,.2)}}
.ds-brand {{color: #fff; text-decoration: none; font-size: 1.3rem; font-weight: 600; letter-spacing: .01em; padding: 0 8px;
  margin-right: auto}}
.ds-account {{font-size: 0.9rem; white-space: nowrap; overflow: hidden; text-overflow: ellipsis; min-width: 0; padding: 0 8px}}
.ds-account a {{color: #fff}}
.ds-icon-button {{display: inline-flex; align-items: center; justify-content: center; flex: none; width: 44px; height: 44px;
  border-radius: 50%; cursor: pointer; color: #fff; background: transparent; border: 0; padding: 0}}
.ds-icon-button:hover, .ds-icon-button:focus-visible, .ds-menu-state:focus-visible + .ds-menu-button {{background: rgba(255,255,255,.15)}}
.ds-menu-state {{position: absolute; opacity: 0; width: 1px; height: 1px; pointer-events: none}}
.ds-menu-button {{display: none}}
.ds-drawer {{position: fixed; top: {APP_BAR_PX}px; left: 0; bottom: 0; width: {DRAWER_PX}px; box-sizing: border-box; overflow-y: auto;
  background: var(--ds-surface, #fff); border-right: 1px solid var(--ds-border, rgba(0,0,0,.12)); z-index: 900}}
.ds-scrim {{display: none}}
@media (max-width: {PHONE_PX - 1}px) {{
  .ds-menu-button {{display: inline-flex}}
  .ds-drawer {{top: 0; width: 270px; max-width: 85vw; z-index: 1200; border-right: 0; box-shadow: 0 8px 24px rgba(0,0,0,.35);
    transform: translateX(-105%); visibility: hidden; transition: transform .2s ease-out, visibility .2s}}
  .ds-menu-state:checked ~ .ds-drawer {{transform: none; visibility: visible}}
  .ds-menu-state:checked ~ .ds-scrim {{display: block; position: fixed; inset: 0; background: rgba(0,0,0,.45); z-index: 1100}}
}}
nav {{display: flex; flex-direction: column; padding: 8px 0}}
.ds-nav {{display: flex; align-items: center; gap: 16px; padding: 10px 16px; text-decoration: none; border-left: 4px solid transparent;
  color: var(--ds-text, #222); font-size: 0.95rem}}
.ds-nav svg {{color: var(--ds-muted, #555)}}
.ds-nav:hover {{background: color-mix(in srgb, var(--ds-text, #000) 6%, transparent)}}
.ds-nav.ds-active {{border-left-color: var(--ds-primary, #1976d2); font-weight: 600;
  background: color-mix(in srgb, var(--ds-primary, #1976d2) 12%, transparent)}}
.ds-nav.ds-active svg {{color: var(--ds-primary, #1976d2)}}
"""
_BAR_STYLES = {"position": "sticky", "top": "0", "z-index": "1000"}
_HEADER_CSS = """
:host {min-width: 0}
h1 {font-size: 1.5rem; font-weight: 500; line-height: 1.3; margin: 6px 0; overflow-wrap: anywhere; color: var(--ds-text, inherit)}
"""
# the page beside the drawer from 600 px up (the padding overrides Panel's inline one only in the media query)
_MAIN_CSS = f"@media (min-width: {PHONE_PX}px) {{ :host {{padding-left: {DRAWER_PX + 16}px !important}} }}"
_MAIN_STYLES = {"padding": "8px 16px 24px 16px", "box-sizing": "border-box", "min-width": "0"}


def _cookie(name: str) -> str | None:
    cookies = pn.state.cookies or {}
    value = cookies.get(name)
    return value if isinstance(value, str) else None


def session_dark() -> bool:
    """Whether this browser shows the dark theme (its cookie; templates/page.html makes sure it has one)."""
    return _cookie(THEME_COOKIE) == "dark"


@functools.cache
def _template() -> Any:
    """``templates/page.html`` on Panel's own base template. (Not panel-material-ui's, which importing it makes the
    default: it adds its stylesheets and fonts to every page's head and an unversioned theme stylesheet that the
    browser asked the server for again on every load, all before the first paint.)"""
    from panel.io.resources import _env

    return _env.from_string(TEMPLATE.read_text(encoding="utf-8"))


def start_session() -> None:
    """Called before a page is built: this session's components are made in the browser's mode (Panel keeps
    ``config.theme`` per session), Panel's widgets and tables included, and the page uses ``templates/page.html``."""
    pn.config.theme = "dark" if session_dark() else "default"
    # Panel's own widgets in Panel's own design: importing panel-material-ui makes its MaterialDesign everyone's,
    # whose stylesheets every Panel component then loads into its shadow root before it shows (measured +0.06-0.12 s
    # on the Runs and Artifacts pages' first paint); Material UI widgets keep their design either way
    pn.config.design = None
    doc = pn.state.curdoc
    if doc is not None:
        doc.template = _template()
        doc.template_variables["dsagent_mode"] = "dark" if session_dark() else "light"


def after_first_paint(*objects: Any, height: int = 64, **params: Any) -> pn.Column:
    """A place for Material UI widgets that fills in once the page has shown its data.

    Bokeh lays a page out only when every view has rendered, and a Material UI component renders only after
    panel-material-ui's module is evaluated (~0.2 s of main thread, more on a busy machine): in the first
    document they held back everything else. Here a skeleton of ``height`` px stands in until the browser has
    the page, then the widgets replace it; the page's head asks for the module at once (``modulepreload``)."""
    import panel_material_ui as pmui

    from dsagent.panel_app.components import CSS, loading_placeholder

    params.setdefault("sizing_mode", "stretch_width")
    slot = pn.Column(pn.pane.HTML(loading_placeholder(2, "loading the controls"), stylesheets=[CSS], height=height, margin=0,
                                  sizing_mode="stretch_width"), **params)

    def fill() -> None:
        slot.objects = list(objects)

    doc = pn.state.curdoc
    if doc is not None and doc.session_context is not None:
        doc.template_variables["dsagent_module_preload"] = pmui.Page._render_esm(compiled=True, server=True)
        pn.state.onload(fill)
    else:  # outside a server session (a test building the page): no browser to wait for
        fill()
    return slot


def page_header(title: str, actions: Iterable[Any] = ()) -> Any:
    """The page's title and its actions on one row; at a narrow width the actions wrap below the title."""
    html = f"<h1>{untrusted.text(title)}</h1>"
    if not actions:  # one pane, not a row of one: every model costs the page's first response
        return pn.pane.HTML(html, stylesheets=[_HEADER_CSS], margin=(4, 0), sizing_mode="stretch_width")
    heading = pn.pane.HTML(html, stylesheets=[_HEADER_CSS], margin=0, styles={"flex": "1 1 240px", "min-width": "0"})
    return pn.FlexBox(heading, *actions, align_items="center", flex_wrap="wrap", gap="8px", sizing_mode="stretch_width",
                      margin=(4, 0))


def _links(active: str) -> str:
    from dsagent.panel_app.components import icon

    def link(item: NavItem) -> str:
        attributes = "class='ds-nav ds-active' aria-current='page'" if item.route == active else "class='ds-nav'"
        return (f"<a {attributes} href='./{untrusted.text(item.route.lstrip('/'))}'>{icon(item.icon, 22)}"
                f"<span>{untrusted.text(item.title)}</span></a>")

    return "<nav aria-label='pages'>" + "".join(link(item) for item in NAV) + "</nav>"


def _app_bar(active: str, user: str | None) -> pn.pane.HTML:
    """The bar and the drawer: menu button (phones), name, who is logged in, the theme toggle; the drawer's links."""
    dark = session_dark()
    account = f"<span class='ds-account'>{untrusted.text(user)} · <a href='./logout'>log out</a></span>" if user else ""
    toggle = (f"<button type='button' class='ds-icon-button ds-theme-toggle' aria-label='switch to {'light' if dark else 'dark'} mode' "
              f"title='switch to {'light' if dark else 'dark'} mode'>{_ICON.format(body=_SUN if dark else _MOON)}</button>")
    bar = (f"<div class='ds-bar'><input type='checkbox' id='ds-menu' class='ds-menu-state' aria-label='show the pages'>"
           f"<label for='ds-menu' class='ds-icon-button ds-menu-button' title='pages'>{_ICON.format(body=_MENU)}</label>"
           f"<a class='ds-brand' href='./'>dsagent</a>{account}{toggle}"
           f"<label for='ds-menu' class='ds-scrim'></label><div class='ds-drawer'>{_links(active)}</div></div>")
    return pn.pane.HTML(bar, stylesheets=[_BAR_CSS], sizing_mode="stretch_width", margin=0, styles=_BAR_STYLES)


def page_frame(active: str, title: str, *body: Any, actions: Iterable[Any] = (), user: str | None = None) -> pn.Column:
    """The page: app bar, drawer with ``active`` (a route) marked, ``title`` with ``actions``, then ``body``."""
    main = pn.Column(page_header(title, actions), *body, sizing_mode="stretch_width", stylesheets=[_MAIN_CSS],
                     styles=_MAIN_STYLES, margin=0)
    doc = pn.state.curdoc
    if doc is not None:
        from bokeh.models import CustomJS

        doc.js_on_event("document_ready", CustomJS(code=_WIRE_TOGGLE))
    return pn.Column(_app_bar(active, user), main, sizing_mode="stretch_width", margin=0)
