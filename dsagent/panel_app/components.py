"""What every page shows the same way: status chips, cards, empty states, loading placeholders, the events
timeline and the not-found page.

Most are HTML strings (a chip in a Tabulator cell, a timeline in an HTML pane) styled by ``CSS``, which
``widgets.html_pane`` and ``widgets.Table`` carry into their shadow roots; colours come from the variables
``templates/page.html`` sets for the light and the dark theme. Plain HTML rather than a Material UI
component each: a React root per chip or row would cost the first paint (docs/architecture.md, "The frame").
Text from data goes through ``untrusted``; the HTML arguments (``hint``, ``message``) are the page's own.

    status_chip("failed")                              # '<span class="ds-chip ds-chip-failed">…failed</span>'
    card(table, title="Latest runs")                   # a bordered block of the page
    empty_state("No runs yet", "Start one: <code>dsagent run NOTEBOOK.ipynb</code>")
    loading_placeholder()                              # grey lines while the first data loads
    timeline(events)                                   # one folded <details> per event
    not_found_page("/runs", "Run 9999", "There is no run 9999.", "./runs", "All runs")
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Iterable

import panel as pn

from dsagent.panel_app import untrusted
from dsagent.panel_app.formats import exact_time

if TYPE_CHECKING:
    from dsagent.artifacts.models import Event

__all__ = ["CSS", "STATUS_ICONS", "status_chip", "icon", "card", "empty_state", "loading_placeholder", "link_button",
           "timeline", "event_summary", "not_found_page"]

_SVG = ('<svg class="ds-icon{cls}" viewBox="0 0 24 24" width="{size}" height="{size}" fill="none" stroke="currentColor" '
        'stroke-width="2.2" stroke-linecap="round" stroke-linejoin="round" aria-hidden="true">{body}</svg>')

#: one drawing per run status (and the icons the other components use), 24x24, stroked in the text colour
STATUS_ICONS = {
    "queued": '<circle cx="12" cy="12" r="8.5"/><path d="M12 7.5v4.5l3 2"/>',
    "running": '<path d="M12 3.5a8.5 8.5 0 1 0 8.5 8.5"/>',
    "idle": '<path d="M9 7v10M15 7v10"/>',
    "succeeded": '<path d="M5 12.5l4.5 4.5L19 7.5"/>',
    "failed": '<path d="M7 7l10 10M17 7L7 17"/>',
    "unverified": '<path d="M12 3.5L2.8 19.5h18.4z"/><path d="M12 10v4.5M12 17.3v.2"/>',
    "cancelled": '<circle cx="12" cy="12" r="8.5"/><path d="M6 6l12 12"/>',
}
_ICONS = {
    **STATUS_ICONS,
    "unknown": '<circle cx="12" cy="12" r="8.5"/>',
    "empty": '<path d="M3.5 13.5l3-8h11l3 8v5h-17z"/><path d="M3.5 13.5h5l1 2h5l1-2h5"/>',
    "search": '<circle cx="10.5" cy="10.5" r="6"/><path d="M15 15l5.5 5.5"/>',
    "back": '<path d="M19 12H5M11 6l-6 6 6 6"/>',
    # the navigation drawer's (PageSpec.icon names)
    "dashboard": '<rect x="3.5" y="3.5" width="7" height="9" rx="1"/><rect x="13.5" y="3.5" width="7" height="5" rx="1"/>'
                 '<rect x="13.5" y="11.5" width="7" height="9" rx="1"/><rect x="3.5" y="15.5" width="7" height="5" rx="1"/>',
    "runs": '<path d="M9 6h11M9 12h11M9 18h11"/><path d="M4 6h.01M4 12h.01M4 18h.01"/>',
    "artifacts": '<rect x="3.5" y="4.5" width="17" height="15" rx="2"/><circle cx="9" cy="10" r="1.8"/><path d="M20.5 16l-5-5-9 8.5"/>',
    "notebooks": '<path d="M5 4.5h11a2 2 0 0 1 2 2v13H7a2 2 0 0 1-2-2z"/><path d="M5 17.5a2 2 0 0 1 2-2h11M9 8.5h5"/>',
    "chat": '<path d="M4.5 5.5h15v10h-9l-4.5 4v-4h-1.5z"/>',
    "schedules": '<circle cx="12" cy="12" r="8.5"/><path d="M12 7v5l3.5 2"/>',
    "page": '<path d="M6.5 3.5h7l4 4v13h-11z"/><path d="M13.5 3.5v4h4"/>',
}

CSS = """
:host {color: var(--ds-text, inherit); font-size: 0.95rem; line-height: 1.5}
a {color: var(--ds-link, #1565c0)}
code {background: var(--ds-code-bg, #f5f5f5); padding: 0 4px; border-radius: 4px; font-size: 0.9em}
.ds-icon {flex: none; vertical-align: middle}
.ds-spin {animation: ds-spin 1.1s linear infinite; transform-origin: 50% 50%}
@keyframes ds-spin {to {transform: rotate(360deg)}}
.ds-chip {display: inline-flex; align-items: center; gap: 4px; height: 22px; box-sizing: border-box; padding: 0 9px 0 6px;
  border-radius: 11px; font-size: 0.8rem; font-weight: 500; line-height: 1; white-space: nowrap; vertical-align: middle;
  color: var(--ds-c); background: color-mix(in srgb, var(--ds-c) 13%, transparent);
  border: 1px solid color-mix(in srgb, var(--ds-c) 45%, transparent)}
.ds-chip-queued {--ds-c: var(--ds-queued, #6b7280)} .ds-chip-running {--ds-c: var(--ds-running, #0277bd)}
.ds-chip-idle {--ds-c: var(--ds-idle, #7b1fa2)} .ds-chip-succeeded {--ds-c: var(--ds-succeeded, #2e7d32)}
.ds-chip-failed {--ds-c: var(--ds-failed, #c62828)} .ds-chip-unverified {--ds-c: var(--ds-unverified, #e65100)}
.ds-chip-cancelled {--ds-c: var(--ds-cancelled, #8d6e63)} .ds-chip-unknown {--ds-c: var(--ds-muted, #666)}
.ds-muted {color: var(--ds-muted, rgba(0,0,0,.6))}
.ds-card-title {font-size: 1.05rem; font-weight: 500; line-height: 1.6; margin: 4px 0 6px 0; color: var(--ds-text, inherit)}
.ds-empty {display: flex; flex-direction: column; align-items: center; text-align: center; gap: 6px; padding: 28px 12px;
  color: var(--ds-muted, rgba(0,0,0,.6))}
.ds-empty-title {font-size: 1.05rem; font-weight: 500; color: var(--ds-text, inherit)}
.ds-empty-hint {max-width: 560px; overflow-wrap: anywhere}
.ds-button {display: inline-flex; align-items: center; gap: 6px; padding: 6px 14px; border-radius: 4px; font-weight: 500;
  text-decoration: none; color: var(--ds-surface, #fff); background: var(--ds-primary, #1565c0)}
.ds-skeleton {display: flex; flex-direction: column; gap: 10px; padding: 8px 0}
.ds-skeleton span {display: block; height: 14px; border-radius: 4px; background: var(--ds-skeleton, rgba(0,0,0,.08));
  animation: ds-pulse 1.4s ease-in-out infinite}
@keyframes ds-pulse {50% {opacity: 0.45}}
.ds-scroll {overflow-x: auto; max-width: 100%}
.ds-timeline {list-style: none; margin: 0; padding: 0 0 0 14px; border-left: 2px solid var(--ds-border, rgba(0,0,0,.12))}
.ds-timeline li {position: relative; margin: 0 0 4px 0; padding-left: 8px}
.ds-timeline li::before {content: ""; position: absolute; left: -20px; top: 8px; width: 10px; height: 10px; border-radius: 50%;
  background: var(--ds-c, var(--ds-muted)); border: 2px solid var(--ds-surface, #fff)}
.ds-timeline summary {cursor: pointer; overflow-wrap: anywhere; padding: 2px 0}
.ds-timeline .ds-when {color: var(--ds-muted); font-variant-numeric: tabular-nums; margin-right: 6px}
.ds-timeline .ds-type {font-weight: 500; margin-right: 6px}
.ds-timeline dl {display: grid; grid-template-columns: minmax(80px, max-content) 1fr; gap: 2px 12px; margin: 4px 0 8px 0;
  font-size: 0.88em}
.ds-timeline dt {color: var(--ds-muted)}
.ds-timeline dd {margin: 0; white-space: pre-wrap; overflow-wrap: anywhere}
.ds-timeline dd ul {margin: 0; padding-left: 18px}
"""

#: a card's look: a bordered block on the page's surface (a Column with inline styles: no component of its own)
CARD_STYLES = {"background": "var(--ds-surface, #fff)", "color": "var(--ds-text, inherit)", "border": "1px solid var(--ds-border, rgba(0,0,0,.12))",
               "border-radius": "8px", "padding": "4px 16px 12px 16px", "box-sizing": "border-box", "min-width": "0"}


def icon(name: str, size: int = 16, spin: bool = False) -> str:
    """One of the dashboard's inline icons as SVG (no web font, nothing fetched)."""
    return _SVG.format(cls=" ds-spin" if spin else "", size=size, body=_ICONS.get(name, _ICONS["page"]))


def status_chip(status: str | None) -> str:
    """A run's (or a chat's) status as a coloured chip with an icon; the same on every page and in every table."""
    known = status in STATUS_ICONS
    kind = status if known else "unknown"
    return (f'<span class="ds-chip ds-chip-{kind}" title="{untrusted.text(status or "")}">'
            f'{icon(kind, 14, spin=status == "running")}{untrusted.text(status or "unknown")}</span>')


def card(*objects: Any, title: str | None = None, **params: Any) -> pn.Column:
    """A block of the page's content with an optional title; what pages put their tables and panes in."""
    header = [pn.pane.HTML(f"<h2 class='ds-card-title'>{untrusted.text(title)}</h2>", stylesheets=[CSS], margin=0,
                           sizing_mode="stretch_width")] if title else []
    params.setdefault("sizing_mode", "stretch_width")
    params.setdefault("margin", (6, 0))
    return pn.Column(*header, *objects, styles={**CARD_STYLES, **params.pop("styles", {})}, **params)


def empty_state(title: str, hint: str = "", *, icon_name: str = "empty") -> str:
    """What an empty list shows: what is (not) there and what to do next. ``title`` is escaped; ``hint`` is the
    page's own HTML (links, ``<code>`` commands), never text from data."""
    hint_html = f"<div class='ds-empty-hint'>{hint}</div>" if hint else ""
    return (f"<div class='ds-empty' role='status'>{icon(icon_name, 40)}<div class='ds-empty-title'>{untrusted.text(title)}</div>"
            f"{hint_html}</div>")


def loading_placeholder(lines: int = 3, label: str = "loading") -> str:
    """Grey pulsing lines where content is on its way (a skeleton), announced to screen readers as ``label``."""
    widths = [92, 76, 84, 60, 70]
    bars = "".join(f"<span style='width:{widths[i % len(widths)]}%'></span>" for i in range(lines))
    return f"<div class='ds-skeleton' role='progressbar' aria-label='{untrusted.text(label)}'>{bars}</div>"


def link_button(href: str, label: str, icon_name: str | None = None) -> str:
    """A link that looks like a contained button (navigation, so a real link: middle-click and back work)."""
    leading = icon(icon_name, 18) if icon_name else ""
    return f"<a class='ds-button' href='{untrusted.text(href)}'>{leading}{untrusted.text(label)}</a>"


# -- the events timeline ---------------------------------------------------------------------------------------

_EVENT_COLOURS = {"cell_finished": "--ds-succeeded", "status": "--ds-running", "cancel_requested": "--ds-cancelled",
                  "error": "--ds-failed", "launched": "--ds-idle"}


def event_summary(event: "Event") -> str:
    """One line for an event (plain text): what happened, the code's first line, a status and its time."""
    payload = event.payload or {}
    if event.type == "cell_started":
        code = (payload.get("code") or "").strip().splitlines()
        return f"cell {payload.get('cell')}: {code[0][:120] if code else ''}"
    if event.type == "cell_finished":
        line = f"cell {payload.get('cell')} {payload.get('status')} in {payload.get('duration')} s, {payload.get('artifacts', 0)} artifacts"
        error = payload.get("error")
        if payload.get("status") == "died" and isinstance(error, dict) and error.get("evalue"):  # why the kernel died, its first line
            line += ": " + str(error["evalue"]).splitlines()[0][:300]
        return line
    if event.type == "status":
        return f"now {payload.get('status')}" + (f": {str(payload['error']).splitlines()[0][:200]}" if payload.get("error") else "")
    if event.type == "output":  # what a cell printed or showed: its first line (the rest is folded)
        if payload.get("output_type") == "error":
            return f"cell {payload.get('cell')} error: {payload.get('ename')}: {_first_line(payload.get('evalue'))}"
        return f"cell {payload.get('cell')} {payload.get('name') or payload.get('output_type')}: {_first_line(payload.get('text'))}"
    if event.type == "record":
        return f"{payload.get('name')} = {_first_line(json.dumps(payload.get('value'), default=str))}"
    if "user" in payload:
        return f"by {payload['user']}"
    return ""


def _first_line(text: Any, limit: int = 200) -> str:
    lines = str(text or "").strip().splitlines()
    return lines[0][:limit] + (" …" if len(lines) > 1 or len(lines[0]) > limit else "") if lines else ""


def _value_html(value: Any, depth: int = 0) -> str:
    """A payload value as readable HTML: nested lists and mappings as lists, long text cut (escaped)."""
    if isinstance(value, dict) and depth < 3:
        return "<ul>" + "".join(f"<li><b>{untrusted.text(k)}</b>: {_value_html(v, depth + 1)}</li>" for k, v in value.items()) + "</ul>"
    if isinstance(value, (list, tuple)) and depth < 3:
        return "<ul>" + "".join(f"<li>{_value_html(v, depth + 1)}</li>" for v in value[:50]) + "</ul>"
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return untrusted.text(text if len(text) <= 2000 else text[:2000] + f"… ({len(text) - 2000} more characters)")


def timeline(events: Iterable["Event"]) -> str:
    """Events as a vertical timeline: time, type and a one-line summary; the payload folded under each."""
    items = []
    for event in events:
        colour = _EVENT_COLOURS.get(event.type, "--ds-muted")
        details = "".join(f"<dt>{untrusted.text(k)}</dt><dd>{_value_html(v)}</dd>" for k, v in (event.payload or {}).items())
        when = event.time.strftime("%H:%M:%S") if event.time else ""
        items.append(
            f"<li style='--ds-c: var({colour})'><details><summary><span class='ds-when' title='{exact_time(event.time)}'>{when}</span>"
            f"<span class='ds-type'>{untrusted.text(event.type.replace('_', ' '))}</span>{untrusted.text(event_summary(event))}</summary>"
            f"{f'<dl>{details}</dl>' if details else ''}</details></li>")
    return f"<ol class='ds-timeline'>{''.join(items)}</ol>" if items else ""


# -- the not-found page ----------------------------------------------------------------------------------------

def not_found_page(active: str, title: str, message: str, back_href: str, back_label: str, user: str | None = None) -> Any:
    """A whole page for an address that names nothing: what is missing, and a way back (``message`` is the page's
    own HTML; ids in it must already be numbers or escaped)."""
    from dsagent.panel_app.layout import page_frame

    body = (f"<div class='ds-empty' role='alert'>{icon('search', 44)}<div class='ds-empty-title'>{message}</div>"
            f"<div>{link_button(back_href, back_label, 'back')}</div></div>")
    pane = pn.pane.HTML(body, stylesheets=[CSS], sizing_mode="stretch_width", margin=0)
    return page_frame(active, title, card(pane), user=user)
