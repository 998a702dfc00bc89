"""The Schedules page (``/schedules``): the workspace's cron schedules, and making, changing and firing them.

The list is one page of ``schedule_rows`` (the listing ``dsagent schedule ls``
prints: cron in words, next and last fire time, last status linking to the
run), re-read every few poll intervals. The form checks the cron expression
and time zone as they are typed (croniter, through ``schedule_spec``; the
error names the wrong field) and saves through ``make_schedule``, the same
checks as the CLI. Edits are rows in the store: the scheduler reads them at
its next tick, no restart. Run now fires through this dashboard's own
scheduler when it has one, else through ``dsagent schedule run-now`` in a
process of its own, so the run never executes on the pages' event loop.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import panel as pn

from dsagent.panel_app import untrusted
from dsagent.errors import DsagentError
from dsagent.panel_app.widgets import (
    Notice,
    current_user,
    html_pane,
    page_frame,
    run_link,
    status_badge,
)

if TYPE_CHECKING:
    from dsagent.panel_app.context import AppContext

__all__ = ["cron_feedback", "page", "relative_time"]

PAGE_SIZE = 25
_KINDS = ["notebook", "agent", "batch"]


def relative_time(when: datetime | None, now: datetime) -> str:
    """"in 5 min", "2 h ago": how far a time is from now, in words."""
    if when is None:
        return ""
    seconds = (when - now).total_seconds()
    span = abs(seconds)
    if span < 60:  # minutes at the finest: the list is re-drawn only when its text changes, not every second
        return "within a minute" if seconds >= 0 else "under a minute ago"
    if span < 3600:
        words = f"{span // 60:.0f} min"
    elif span < 86400:
        words = f"{span // 3600:.0f} h {span % 3600 // 60:.0f} min"
    else:
        words = f"{span // 86400:.0f} days" if span >= 2 * 86400 else f"1 day {span % 86400 // 3600:.0f} h"
    return f"in {words}" if seconds >= 0 else f"{words} ago"


def cron_feedback(expr: str, tz: str, now: datetime) -> tuple[bool, str]:
    """(valid, text): the cron in words and its next firing, or which field is wrong; the time zone too."""
    from dsagent.runs.schedule_spec import (
        check_cron,
        check_timezone,
        describe_cron,
        next_fire_after,
    )

    try:
        cron = check_cron(expr.strip())
    except DsagentError as exc:
        return False, exc.message
    try:
        check_timezone(tz.strip() or "UTC")
    except DsagentError as exc:
        return False, f"{exc.message} ({exc.hint})"
    upcoming = next_fire_after(cron, tz.strip() or "UTC", now)
    return True, f"{describe_cron(cron)} — next {upcoming.strftime('%Y-%m-%d %H:%M UTC')} ({relative_time(upcoming, now)})"


def _rows_html(rows: list[dict[str, Any]], now: datetime) -> str:
    if not rows:
        return "<i>no schedules yet: make one with the form below</i>"
    body = []
    for r in rows:
        nxt = "paused" if r["paused"] else (f"{untrusted.text(r['next_fire_local'] or '')}<br><small>"
                                            f"{relative_time(datetime.fromisoformat(r['next_fire']), now)}</small>" if r["next_fire"] else "")
        last = ""
        if r["last_fire"]:
            last = f"{relative_time(datetime.fromisoformat(r['last_fire']), now)}"
        status = f"{status_badge(r['last_status'])} run {run_link(r['last_run_id'])}" if r["last_run_id"] else "<i>never ran</i>"
        body.append(
            f"<tr class='ds-schedule' data-name='{untrusted.text(r['name'])}'><td><b>{untrusted.text(r['name'])}</b></td>"
            f"<td><code>{untrusted.text(r['cron'])}</code> ({untrusted.text(r['timezone'])})<br>{untrusted.text(r['cron_words'])}</td>"
            f"<td>{untrusted.text(r['target'])}</td><td>{nxt}</td><td>{last}</td><td>{status}</td></tr>")
    return ("<table class='ds-kv'><tr><th>name</th><th>when</th><th>runs</th><th>next fire</th><th>last fire</th><th>last run</th></tr>"
            + "".join(body) + "</table>")


def _text_parameters(text: str) -> dict[str, str]:
    """``name = value`` lines (or ``name: value``) into text parameters, read like ``-p NAME VALUE``."""
    found = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        sep = "=" if "=" in line else ":"
        name, _, value = line.partition(sep)
        if not _ or not name.strip():
            raise DsagentError(f"parameters line {number} ({line!r}) is not  name = value", hint="one  name = value  per line")
        found[name.strip()] = value.strip()
    return found


def _resolve(home: Path, text: str) -> str:
    """A path as typed; a bare name of a notebook in <workspace>/notebooks/ means that one."""
    path = Path(text.strip()).expanduser()
    if not path.is_absolute() and not path.exists() and (home / "notebooks" / path).exists():
        return str(home / "notebooks" / path)
    return str(path)


def _set(widget: Any, text: str) -> None:
    """Set a text field from code: ``value_input`` too, which the form reads and the browser alone updates."""
    widget.value = text
    widget.value_input = text


def _text(widget: Any) -> str:
    """What the field holds now (``value_input`` follows every keystroke, ``value`` only Enter or blur)."""
    return widget.value_input if widget.value_input is not None else (widget.value or "")


class _Form:
    """Create/edit form: the fields, their live checks, and the schedule they make."""

    def __init__(self, ctx: AppContext) -> None:
        from dsagent.kernel_gateway.registry import backend_registry

        self.ctx = ctx
        self.editing: str | None = None
        self.name = pn.widgets.TextInput(name="name", placeholder="daily-report", width=220)
        self.cron = pn.widgets.TextInput(name="cron (minute hour day month weekday)", value="0 6 * * 1-5", width=260)
        self.timezone = pn.widgets.TextInput(name="time zone", value="UTC", width=180)
        self.cron_help = html_pane("", css_classes=["ds-cron-help"])
        self.kind = pn.widgets.RadioButtonGroup(name="runs", options=_KINDS, value="notebook", button_type="light")
        self.notebook = pn.widgets.TextInput(name="notebook (path, or a name in the workspace's notebooks/)", width=480)
        self.parameters = pn.widgets.TextAreaInput(name="parameters (name = value per line)", height=80, width=480)
        self.question = pn.widgets.TextAreaInput(name="question for the analysis agent", height=80, width=480, visible=False)
        self.data = pn.widgets.TextInput(name="data files (comma separated paths)", width=480, visible=False)
        self.grid = pn.widgets.TextInput(name="grid file (YAML: alpha: [0.1, 0.5])", width=480, visible=False)
        try:
            backends = backend_registry.names()
        except Exception:  # a broken plugin must not take the page down
            backends = []
        self.backend = pn.widgets.Select(name="backend", options=["(default)", *backends], value="(default)", width=150)
        self.overlap = pn.widgets.Select(name="if still running", options=["skip", "queue"], value="skip", width=130)
        self.misfire = pn.widgets.Select(name="missed firings", options=["run_once", "skip"], value="run_once", width=130)
        self.notify_url = pn.widgets.TextInput(name="webhook on failure (optional)", width=300)
        self.save = pn.widgets.Button(name="Create schedule", button_type="primary", width=160)
        self.cancel_edit = pn.widgets.Button(name="New instead", width=120, visible=False)
        self.message = html_pane("")
        self.title = pn.pane.Markdown("### New schedule")
        for field in (self.name, self.cron, self.timezone, self.notebook, self.parameters, self.question, self.data, self.grid,
                      self.notify_url):
            _set(field, field.value or "")
        self.kind.param.watch(self._show_kind, "value")
        for widget in (self.cron, self.timezone):
            widget.param.watch(self.check, "value_input")
            widget.param.watch(self.check, "value")
        self.check()

    def _show_kind(self, *_: Any) -> None:
        kind = self.kind.value
        self.notebook.visible = kind in ("notebook", "batch")
        self.parameters.visible = kind == "notebook"
        self.question.visible = self.data.visible = kind == "agent"
        self.grid.visible = kind == "batch"

    def check(self, *_: Any) -> bool:
        """Check cron and time zone as typed (cheap and local: croniter, zoneinfo); Save only when both are right."""
        from dsagent.artifacts.models import utcnow

        ok, text = cron_feedback(_text(self.cron), _text(self.timezone), utcnow())
        color = "#198754" if ok else "#dc3545"
        self.cron_help.object = f"<span class='ds-cron-{'ok' if ok else 'error'}' style='color:{color}'>{'✓ ' if ok else '✗ '}{untrusted.text(text)}</span>"
        self.save.disabled = not ok
        return ok

    def layout(self) -> pn.Column:
        return pn.Column(
            self.title, pn.Row(self.name, self.cron, self.timezone), self.cron_help, self.kind, self.notebook, self.parameters,
            self.question, self.data, self.grid, pn.Row(self.backend, self.overlap, self.misfire, self.notify_url),
            pn.Row(self.save, self.cancel_edit), self.message, sizing_mode="stretch_width",
        )

    def build(self) -> Any:
        """The checked ``Schedule`` the fields describe (blocking: reads the notebook; call it in a worker thread)."""
        from dsagent.runs.schedule_spec import make_schedule

        kind, home = self.kind.value, self.ctx.home
        target: dict[str, Any] = {}
        if kind == "notebook":
            target = {"notebook": _resolve(home, _text(self.notebook)), "text_parameters": _text_parameters(_text(self.parameters))}
        elif kind == "agent":
            data = [d.strip() for d in _text(self.data).split(",") if d.strip()]
            target = {"agent": _text(self.question).strip(), "data": data}
        else:
            target = {"batch": _resolve(home, _text(self.notebook)), "grid": _text(self.grid).strip() or None}
        name = self.editing or _text(self.name).strip()
        return make_schedule(name, _text(self.cron).strip(), **target,
                             backend=None if self.backend.value == "(default)" else self.backend.value,
                             timezone=_text(self.timezone).strip() or "UTC", overlap=self.overlap.value,
                             misfire=self.misfire.value, notify_url=_text(self.notify_url).strip() or None)

    def load(self, schedule: Any) -> None:
        """Fill the fields from a stored schedule to edit it."""
        t = schedule.target
        self.editing = schedule.name
        _set(self.name, schedule.name)
        self.name.disabled = True
        _set(self.cron, schedule.cron)
        _set(self.timezone, schedule.timezone)
        self.kind.value = t.get("kind", "notebook")
        _set(self.notebook, t.get("notebook", "") or "")
        params = {**t.get("parameters", {}), **t.get("text_parameters", {})}
        _set(self.parameters, "\n".join(f"{k} = {v}" for k, v in params.items()))
        _set(self.question, t.get("question", "") or "")
        _set(self.data, ", ".join(t.get("data", [])))
        _set(self.grid, t.get("grid", "") or "")
        self.backend.value = t.get("backend") or "(default)"
        self.overlap.value, self.misfire.value = schedule.overlap, schedule.misfire
        _set(self.notify_url, schedule.notify_url or "")
        self.title.object = f"### Edit schedule {schedule.name}"
        self.save.name, self.cancel_edit.visible = "Save changes", True
        self._show_kind()
        self.check()

    def reset(self, *_: Any) -> None:
        self.editing = None
        _set(self.name, "")
        self.name.disabled = False
        self.title.object = "### New schedule"
        self.save.name, self.cancel_edit.visible = "Create schedule", False


def _save(store: Any, schedule: Any, editing: bool) -> Any:
    if not editing:
        return store.add_schedule(schedule)
    return store.update_schedule(schedule.name, cron=schedule.cron, timezone=schedule.timezone, target=schedule.target,
                                 overlap=schedule.overlap, misfire=schedule.misfire, notify_url=schedule.notify_url)


def _run_now_elsewhere(ctx: AppContext, name: str, user: str) -> str:
    """Without a scheduler in this dashboard: ``dsagent schedule run-now`` in its own process (its log in the workspace)."""
    env = {**os.environ, "DSAGENT_HOME": str(ctx.home)}
    with open(ctx.home / "run-now.log", "ab") as log:  # the child keeps its own copy of the descriptor
        subprocess.Popen([sys.executable, "-m", "dsagent", "schedule", "run-now", name, "--launched-by", user], env=env, stdout=log,
                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    return f"schedule {name} fired by a `dsagent schedule run-now` process (this dashboard runs no scheduler); its run appears below"


def page(ctx: AppContext) -> pn.Column:
    from dsagent.artifacts.models import utcnow
    from dsagent.runs.schedule_spec import schedule_rows

    notice = Notice()
    listing = html_pane("loading…")
    position = pn.pane.HTML("", width=240)
    prev_button = pn.widgets.Button(name="◀ previous", width=100, disabled=True)
    next_button = pn.widgets.Button(name="next ▶", width=100, disabled=True)
    chosen = pn.widgets.Select(name="schedule", options=[], width=220)
    edit = pn.widgets.Button(name="Edit", width=80)
    pause = pn.widgets.Button(name="Pause", width=90)
    run_now = pn.widgets.Button(name="Run now", button_type="success", width=100)
    delete = pn.widgets.Button(name="Delete", button_type="danger", width=110)
    action_message = html_pane("")
    for button in (edit, pause, run_now, delete):  # until the first read has chosen a schedule to act on
        button.disabled = True
    form = _Form(ctx)
    state: dict[str, Any] = {"cursors": [None], "next": None, "rows": [], "html": None, "confirm_delete": None}

    async def refresh(*_: Any) -> None:
        async def work() -> None:
            now = utcnow()
            rows, nxt = await ctx.read(schedule_rows, ctx.store, now, limit=PAGE_SIZE, cursor=state["cursors"][-1])
            text = _rows_html(rows, now)
            if text != state["html"]:
                listing.object = text
                state["html"] = text
            state["rows"], state["next"] = rows, nxt
            names = [r["name"] for r in rows]
            if names != chosen.options:
                current = chosen.value
                chosen.options = names
                chosen.value = current if current in names else (names[0] if names else None)
            page_no = len(state["cursors"])
            position.object = f"page {page_no}" + (f" · {len(rows)} schedules" if rows else "")
            prev_button.disabled = page_no == 1
            next_button.disabled = nxt is None
            _sync_pause_label()
        await notice.guard(work)

    def _row(name: str | None) -> dict[str, Any] | None:
        return next((r for r in state["rows"] if r["name"] == name), None)

    def _sync_pause_label(*_: Any) -> None:
        row = _row(chosen.value)
        pause.name = "Resume" if row and row["paused"] else "Pause"
        for button in (edit, pause, run_now, delete):
            button.disabled = row is None
        if state["confirm_delete"] != chosen.value:
            state["confirm_delete"] = None
            delete.name = "Delete"

    def say(text: str, ok: bool = True) -> None:
        action_message.object = f"<span style='color:{'#198754' if ok else '#dc3545'}'>{untrusted.text(text)}</span>"

    async def act(work) -> None:
        try:
            say(await work())
        except DsagentError as exc:
            say(f"{exc.message}" + (f" ({exc.hint})" if exc.hint else ""), ok=False)
        await refresh()

    async def on_edit(_: Any) -> None:
        name = chosen.value
        try:
            form.load(await ctx.read(ctx.store.get_schedule, name))
            say(f"editing {name}: change the fields below and save")
        except DsagentError as exc:
            say(exc.message, ok=False)

    async def on_pause(_: Any) -> None:
        name, row = chosen.value, _row(chosen.value)
        paused = not (row and row["paused"])

        async def work() -> str:
            await ctx.read(ctx.store.update_schedule, name, paused=paused)
            return f"schedule {name} {'paused' if paused else 'resumed (it fires from its next cron time)'}"
        await act(work)

    async def on_delete(_: Any) -> None:
        name = chosen.value
        if state["confirm_delete"] != name:
            state["confirm_delete"] = name
            delete.name = "Really delete?"
            say(f"click again to delete {name} (its runs stay)", ok=False)
            return

        async def work() -> str:
            await ctx.read(ctx.store.delete_schedule, name)
            state["confirm_delete"] = None
            if form.editing == name:
                form.reset()
            return f"schedule {name} deleted (its runs stay)"
        await act(work)

    async def on_run_now(_: Any) -> None:
        name, user = chosen.value, current_user() or "anonymous"

        async def work() -> str:
            if ctx.scheduler is None:
                return await ctx.read(_run_now_elsewhere, ctx, name, user)
            future = asyncio.wrap_future(ctx.scheduler.run_now(name, user))
            try:  # a refusal (still running) comes at once; the run itself goes on in the scheduler's thread
                await asyncio.wait_for(asyncio.shield(future), 1.0)
            except TimeoutError:
                pass
            return f"schedule {name} fired by this dashboard's scheduler; its run appears in the list"
        await act(work)

    async def on_save(_: Any) -> None:
        if not form.check():
            return
        form.save.disabled = True
        editing = form.editing is not None
        try:
            schedule = await ctx.read(form.build)
            saved = await ctx.read(_save, ctx.store, schedule, editing)
            form.message.object = (f"<span style='color:#198754'>schedule {untrusted.text(saved.name)} "
                                   f"{'saved: the scheduler uses it from its next tick' if editing else 'created'}</span>")
            form.reset()  # a blank form: the next save makes a new schedule
            chosen_name = saved.name
        except DsagentError as exc:
            where = form.cron_help if exc.fields.get("reason") in ("bad_cron", "bad_timezone") else form.message
            where.object = f"<span style='color:#dc3545'>✗ {untrusted.text(exc.message)}. {untrusted.text(exc.hint or '')}</span>"
            chosen_name = None
        finally:
            form.save.disabled = False
        await refresh()
        if chosen_name in chosen.options:
            chosen.value = chosen_name

    async def older(_: Any) -> None:
        if state["next"] is not None:
            state["cursors"].append(state["next"])
            await refresh()

    async def newer(_: Any) -> None:
        if len(state["cursors"]) > 1:
            state["cursors"].pop()
            await refresh()

    chosen.param.watch(_sync_pause_label, "value")
    edit.on_click(on_edit)
    pause.on_click(on_pause)
    delete.on_click(on_delete)
    run_now.on_click(on_run_now)
    form.save.on_click(on_save)
    form.cancel_edit.on_click(form.reset)
    next_button.on_click(older)
    prev_button.on_click(newer)
    pn.state.onload(refresh)
    pn.state.add_periodic_callback(refresh, period=max(1000, ctx.poll_ms * 4))
    who = ("this dashboard fires the schedules" if ctx.scheduler is not None else
           "this dashboard fires no schedules (--no-scheduler): see the Overview for who does")
    return page_frame("/schedules", "Schedules", notice.pane, html_pane(f"<small>{who}; times are UTC unless a zone is named</small>"),
                      pn.Row(prev_button, next_button, position), listing, pn.Row(chosen, edit, pause, run_now, delete), action_message,
                      form.layout(), user=current_user())
