"""How one schedule shows on the Schedules page: its facts in words and its actions (``ScheduleItem``).

A row of ``schedule_spec.schedule_rows`` becomes a block: the name and what it
runs, the cron in words (the expression and zone beside it), the next firing
as a relative time (the exact time on hover), and the last firing: its run's
status chip, the run's link and when, or "firing now" from the moment Run now
was pressed until its run exists. The actions are buttons of the block: Run
now, Pause/Resume, Edit, Delete (a second click confirms).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Awaitable, Callable

import panel as pn
import panel_material_ui as pmui

from dsagent.panel_app import untrusted
from dsagent.panel_app.components import icon, status_chip
from dsagent.panel_app.formats import exact_time
from dsagent.panel_app.schedule_form import relative_time
from dsagent.panel_app.widgets import html_pane, run_link

__all__ = ["ScheduleItem", "schedule_html", "LIST_CSS"]

LIST_CSS = """
.ds-schedule {min-width: 0; overflow-wrap: anywhere}
.ds-schedule-head {display: flex; flex-wrap: wrap; align-items: center; gap: 4px 10px}
.ds-schedule-name {font-weight: 600; font-size: 1.02rem}
.ds-schedule-when {margin: 2px 0}
.ds-schedule-facts {display: grid; grid-template-columns: max-content 1fr; gap: 2px 12px; margin: 4px 0 0 0}
.ds-schedule-facts dt {color: var(--ds-muted)}
.ds-schedule-facts dd {margin: 0; display: flex; flex-wrap: wrap; align-items: center; gap: 4px 8px}
"""
_ITEM_STYLES = {"border-top": "1px solid var(--ds-border, rgba(0,0,0,.12))", "padding": "10px 0 6px 0", "min-width": "0"}


def _when(iso: str | None, now: datetime) -> str:
    """A stored time as "in 5 min" / "3 min ago" with the exact time on hover."""
    if not iso:
        return ""
    moment = datetime.fromisoformat(iso)
    return f"<time datetime='{untrusted.text(iso)}' title='{exact_time(moment)}'>{relative_time(moment, now)}</time>"


def _next_html(row: dict[str, Any], now: datetime) -> str:
    if row["paused"]:
        return "<span class='ds-muted'>paused: resume it to fire again</span>"
    if not row["next_fire"]:
        return ""
    local = row.get("next_fire_local") or ""
    return _when(row["next_fire"], now) + (f" <span class='ds-muted'>({untrusted.text(local)})</span>" if local else "")


def _last_html(row: dict[str, Any], now: datetime, firing: bool) -> str:
    """The last firing: "firing now" until its run exists, then the run's chip, link and when; else "never fired"."""
    if firing:
        return f"{icon('running', 14, spin=True)} <span>firing now: its run is starting…</span>"
    if row["last_run_id"] is None:
        return ("<span class='ds-muted'>fired " + _when(row["last_fire"], now) + ", no run started (see the scheduler's log)</span>"
                if row["last_fire"] else "<span class='ds-muted'>never fired yet</span>")
    return f"{status_chip(row['last_status'])} <span>run {run_link(row['last_run_id'])}</span> {_when(row['last_fire'], now)}"


def schedule_html(row: dict[str, Any], now: datetime, firing: bool = False) -> str:
    """One schedule (a row of ``schedule_rows``) as HTML; every text from the store escaped."""
    paused = f" {status_chip('paused')}" if row["paused"] else ""
    return (
        f"<div class='ds-schedule' data-name='{untrusted.text(row['name'])}'>"
        f"<div class='ds-schedule-head'><span class='ds-schedule-name'>{untrusted.text(row['name'])}</span>{paused}"
        f"<span class='ds-muted'>{untrusted.text(row['target'])}</span></div>"
        f"<div class='ds-schedule-when'>{untrusted.text(row['cron_words'])} <span class='ds-muted'>(<code>{untrusted.text(row['cron'])}</code>"
        f" · {untrusted.text(row['timezone'])})</span></div>"
        f"<dl class='ds-schedule-facts'><dt>next firing</dt><dd>{_next_html(row, now)}</dd>"
        f"<dt>last firing</dt><dd>{_last_html(row, now, firing)}</dd></dl></div>")


class ScheduleItem:
    """One schedule's block: its HTML and its buttons. ``actions`` maps a button's name (run_now, pause, edit, delete)
    to the page's handler, called with the schedule's name."""

    def __init__(self, name: str, actions: dict[str, Callable[[str], Awaitable[Any]]]) -> None:
        self.name = name
        self.confirming_delete = False
        self.info = html_pane("", stylesheets=[LIST_CSS], margin=0, styles={"flex": "1 1 300px", "min-width": "0"})
        small = dict(size="small", variant="outlined", margin=0)  # four fit one line of a phone
        self.run_now = pmui.Button(label="Run now", icon="play_arrow", size="small", color="primary", margin=0)
        self.pause = pmui.Button(label="Pause", icon="pause", **small)
        self.edit = pmui.Button(label="Edit", icon="edit", **small)
        self.delete = pmui.Button(label="Delete", icon="delete", color="error", **small)
        for key in ("run_now", "pause", "edit", "delete"):
            getattr(self, key).on_click(self._calling(actions[key]))
        buttons = pn.FlexBox(self.run_now, self.pause, self.edit, self.delete, gap="6px", align_items="center", flex_wrap="wrap",
                             styles={"flex": "0 1 auto"})
        self.layout = pn.FlexBox(self.info, buttons, align_items="flex-start", gap="8px 16px", flex_wrap="wrap",
                                 sizing_mode="stretch_width", styles=_ITEM_STYLES, css_classes=["ds-schedule-item"])

    def _calling(self, handler: Callable[[str], Awaitable[Any]]) -> Callable[[Any], Awaitable[Any]]:
        async def clicked(_: Any) -> None:  # a coroutine function: Panel awaits it on its event loop
            await handler(self.name)
        return clicked

    def update(self, row: dict[str, Any], now: datetime, firing: bool) -> None:
        """Show ``row``; nothing is sent when nothing changed (the list is read every few poll intervals)."""
        html = schedule_html(row, now, firing)
        if html != self.info.object:
            self.info.object = html
        label = "Resume" if row["paused"] else "Pause"
        if self.pause.label != label:
            self.pause.param.update(label=label, icon="play_circle" if row["paused"] else "pause")

    def place(self, first: bool) -> None:
        """A line above each block but the first."""
        styles = {**_ITEM_STYLES, "border-top": "none" if first else _ITEM_STYLES["border-top"]}
        if self.layout.styles != styles:
            self.layout.styles = styles

    def ask_to_confirm_delete(self, asking: bool) -> None:
        self.confirming_delete = asking
        self.delete.param.update(label="Really delete?" if asking else "Delete", variant="contained" if asking else "outlined")
