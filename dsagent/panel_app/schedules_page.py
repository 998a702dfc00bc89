"""The Schedules page (``/schedules``): the workspace's cron schedules, and making, changing and firing them.

Three parts, each its own module:

- this one, the page (``SchedulesView``): one page of ``schedule_rows`` (the
  listing ``dsagent schedule ls`` prints), re-read every few poll intervals,
  and what the buttons do. Edits are rows in the store: the scheduler reads
  them at its next tick, no restart. Run now fires through this dashboard's
  own scheduler when it has one, else through ``dsagent schedule run-now`` in
  a process of its own, so the run never executes on the pages' event loop;
  the schedule says "firing now" from the click until its run exists.
- ``schedule_list.py``: how one schedule shows (cron in words, next firing,
  last firing's chip and run) and its buttons;
- ``schedule_form.py``: the create/edit form (cron checked as typed, the
  notebook picked from the Notebooks page's list, its parameters as the
  notebook page's form).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from datetime import datetime
from typing import TYPE_CHECKING, Any

import panel as pn
import param

from dsagent.errors import DsagentError
from dsagent.panel_app import untrusted
from dsagent.panel_app.components import card, empty_state, loading_placeholder
from dsagent.panel_app.layout import after_first_paint, page_frame
from dsagent.panel_app.schedule_form import ScheduleForm
from dsagent.panel_app.schedule_list import ScheduleItem
from dsagent.panel_app.widgets import Notice, Poller, current_user, html_pane

if TYPE_CHECKING:
    from dsagent.panel_app.context import AppContext

__all__ = ["SchedulesView", "page", "run_now_elsewhere"]

PAGE_SIZE = 25
FIRING_SECONDS = 120  # how long "firing now" waits for the run before the list shows what the store says
_NO_SCHEDULES_HINT = ("Make one with the form below, or from a terminal:<br><code>dsagent schedule add morning --cron \"0 6 * * 1-5\" "
                      "--notebook notebooks/sales_cohorts.ipynb -p region north</code>")


def run_now_elsewhere(ctx: "AppContext", name: str, user: str) -> str:
    """Without a scheduler in this dashboard: ``dsagent schedule run-now`` in its own process (its log in the workspace)."""
    env = {**os.environ, "DSAGENT_HOME": str(ctx.home)}
    with open(ctx.home / "run-now.log", "ab") as log:  # the child keeps its own copy of the descriptor
        subprocess.Popen([sys.executable, "-m", "dsagent", "schedule", "run-now", name, "--launched-by", user], env=env, stdout=log,
                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    return f"schedule {name} fired by a `dsagent schedule run-now` process (this dashboard runs no scheduler); its run shows in the list"


def _save(store: Any, schedule: Any, editing: bool) -> Any:
    if not editing:
        return store.add_schedule(schedule)
    return store.update_schedule(schedule.name, cron=schedule.cron, timezone=schedule.timezone, target=schedule.target,
                                 overlap=schedule.overlap, misfire=schedule.misfire, notify_url=schedule.notify_url)


class SchedulesView(pn.viewable.Viewer):
    """The list (a page of ``schedule_rows``; ``cursors`` pages through) and the form. A schedule's buttons call
    ``on_run_now``, ``on_pause``, ``on_edit``, ``on_delete`` with its name; the form's Save calls ``on_save``."""

    rows = param.List(default=[], doc="the schedules shown (rows of schedule_rows)")
    cursors = param.List(default=[None], doc="the cursor of each page up to the one shown")
    next_cursor = param.String(default=None, allow_None=True, doc="the next page's cursor; None on the last page")
    firing = param.Dict(default={}, doc="schedule -> (when Run now was pressed, its last run id then): 'firing now' until a new run")

    def __init__(self, ctx: "AppContext", **params: Any) -> None:
        super().__init__(**params)
        self.ctx = ctx
        self.user = current_user() or "anonymous"
        self.notice = Notice()
        self.items: dict[str, ScheduleItem] = {}
        self._listed = False  # the list shows a skeleton until the first read
        self.form = ScheduleForm(ctx)
        self.form.save_button.on_click(self.on_save)
        self.listing = pn.Column(html_pane(loading_placeholder(4, "loading the schedules")), sizing_mode="stretch_width", margin=0)
        self.message = html_pane("", margin=(0, 5), visible=False)
        self.newer = pn.widgets.Button(name="◀ Previous", button_style="outline", disabled=True, width=110)
        self.older = pn.widgets.Button(name="Next ▶", button_style="outline", disabled=True, width=110)
        self.position = html_pane("", width=200, margin=(12, 10))
        self.pager = pn.FlexBox(self.newer, self.older, self.position, flex_wrap="wrap", align_items="center", sizing_mode="stretch_width",
                                visible=False)
        self.newer.on_click(self.on_newer)
        self.older.on_click(self.on_older)
        pn.state.onload(self.form.load_notebooks)
        Poller(self.refresh, max(1000, ctx.poll_ms * 4))

    def __panel__(self) -> Any:
        who = ("this dashboard fires the schedules" if self.ctx.scheduler is not None else
               "this dashboard fires no schedules (--no-scheduler): see the Overview for who does")
        about = html_pane(f"<span class='ds-muted'>{who}; times are UTC unless a zone is named.</span>", margin=(0, 5))
        return page_frame("/schedules", "Schedules", self.notice.pane, about, card(self.message, self.listing, self.pager),
                          card(after_first_paint(self.form, height=420)), user=current_user())

    # -- the list ---------------------------------------------------------------------------------------------

    async def refresh(self) -> None:
        from dsagent.artifacts.models import utcnow
        from dsagent.runs.schedule_spec import schedule_rows

        async def work() -> None:
            now = utcnow()
            rows, nxt = await self.ctx.read(schedule_rows, self.ctx.store, now, limit=PAGE_SIZE, cursor=self.cursors[-1])
            self.next_cursor = nxt
            self._show(rows, now)
        await self.notice.guard(work)

    def _show(self, rows: list[dict[str, Any]], now: datetime) -> None:
        self.firing = {name: since for name, since in self.firing.items() if self._still_firing(name, since, rows, now)}
        names = [r["name"] for r in rows]
        if names != list(self.items) or not self._listed:  # the first read replaces the skeleton, even with no schedules
            kept = {name: self.items.get(name) or self._item(name) for name in names}
            self.items = kept
            self.listing.objects = [item.layout for item in kept.values()] or [html_pane(empty_state("No schedules yet", _NO_SCHEDULES_HINT))]
            self._listed = True
        for index, row in enumerate(rows):
            item = self.items[row["name"]]
            item.place(first=index == 0)
            item.update(row, now, row["name"] in self.firing)
        self.rows = rows
        page_no = len(self.cursors)
        self.position.object = f"page {page_no} · {len(rows)} schedule{'s' if len(rows) != 1 else ''}" if rows else ""
        self.newer.disabled = page_no == 1
        self.older.disabled = self.next_cursor is None
        self.pager.visible = bool(rows) and (page_no > 1 or self.next_cursor is not None)

    @staticmethod
    def _still_firing(name: str, since: tuple[datetime, int | None], rows: list[dict[str, Any]], now: datetime) -> bool:
        """Run now was pressed and no new run of the schedule exists yet (for at most FIRING_SECONDS)."""
        pressed, last_run = since
        row = next((r for r in rows if r["name"] == name), None)
        return row is not None and row["last_run_id"] == last_run and (now - pressed).total_seconds() < FIRING_SECONDS

    def _item(self, name: str) -> ScheduleItem:
        return ScheduleItem(name, {"run_now": self.on_run_now, "pause": self.on_pause, "edit": self.on_edit, "delete": self.on_delete})

    def _row(self, name: str) -> dict[str, Any] | None:
        return next((r for r in self.rows if r["name"] == name), None)

    def say(self, text: str, ok: bool = True) -> None:
        colour = "var(--ds-succeeded)" if ok else "var(--ds-failed)"
        self.message.object = f"<span style='color:{colour}'>{untrusted.text(text)}</span>"
        self.message.visible = True

    async def _act(self, work: Any) -> None:
        """Do one action; say what happened or what went wrong; show the list as it is now."""
        try:
            self.say(await work())
        except DsagentError as exc:
            self.say(exc.message + (f" ({exc.hint})" if exc.hint else ""), ok=False)
        await self.refresh()

    async def on_older(self, _: Any) -> None:
        if self.next_cursor is not None:
            self.cursors = [*self.cursors, self.next_cursor]
            await self.refresh()

    async def on_newer(self, _: Any) -> None:
        if len(self.cursors) > 1:
            self.cursors = self.cursors[:-1]
            await self.refresh()

    # -- a schedule's buttons ---------------------------------------------------------------------------------

    async def on_run_now(self, name: str) -> None:
        from dsagent.artifacts.models import utcnow

        row = self._row(name)
        self.firing = {**self.firing, name: (utcnow(), row["last_run_id"] if row else None)}
        if row is not None:
            self.items[name].update(row, utcnow(), True)

        async def work() -> str:
            if self.ctx.scheduler is None:
                return await self.ctx.read(run_now_elsewhere, self.ctx, name, self.user)
            future = asyncio.wrap_future(self.ctx.scheduler.run_now(name, self.user))
            try:  # a refusal (still running) comes at once; the run itself goes on in the scheduler's thread
                await asyncio.wait_for(asyncio.shield(future), 1.0)
            except TimeoutError:
                pass
            except DsagentError:
                self.firing = {k: v for k, v in self.firing.items() if k != name}
                raise
            return f"schedule {name} fired by this dashboard's scheduler; its run shows in the list"
        await self._act(work)

    async def on_pause(self, name: str) -> None:
        row = self._row(name)
        paused = not (row and row["paused"])

        async def work() -> str:
            await self.ctx.read(self.ctx.store.update_schedule, name, paused=paused)
            return f"schedule {name} {'paused' if paused else 'resumed (it fires from its next cron time)'}"
        await self._act(work)

    async def on_edit(self, name: str) -> None:
        try:
            self.form.load(await self.ctx.read(self.ctx.store.get_schedule, name))
        except DsagentError as exc:
            self.say(exc.message, ok=False)
            return
        self.say(f"editing {name}: change the fields of the form and press Save changes")
        self.form.cron_input.focus()  # the form is below the list: bring it into view

    async def on_delete(self, name: str) -> None:
        item = self.items.get(name)
        if item is not None and not item.confirming_delete:
            for other in self.items.values():
                other.ask_to_confirm_delete(other is item)
            self.say(f"press “Really delete?” to delete {name} (its runs stay)", ok=False)
            return

        async def work() -> str:
            await self.ctx.read(self.ctx.store.delete_schedule, name)
            if self.form.editing == name:
                self.form.reset()
            return f"schedule {name} deleted (its runs stay)"
        await self._act(work)

    # -- the form ---------------------------------------------------------------------------------------------

    async def on_save(self, _: Any) -> None:
        form = self.form
        if not form.check():
            return
        form.save_button.loading = True
        editing = form.editing is not None
        try:
            schedule = await self.ctx.read(form.build)
            saved = await self.ctx.read(_save, self.ctx.store, schedule, editing)
        except DsagentError as exc:
            if exc.fields.get("reason") in ("bad_cron", "bad_timezone"):
                form.cron_input.error_state, form.cron_input.helper_text = True, exc.message
            form.message.object = f"<span style='color:var(--ds-failed)'>✗ {untrusted.text(exc.message)}. {untrusted.text(exc.hint or '')}</span>"
            return
        finally:
            form.save_button.loading = False
        form.message.object = (f"<span style='color:var(--ds-succeeded)'>schedule {untrusted.text(saved.name)} "
                               f"{'saved: the scheduler uses it from its next tick' if editing else 'created'}</span>")
        form.reset()  # a blank form: the next save makes a new schedule
        await self.refresh()


def page(ctx: "AppContext") -> Any:
    return SchedulesView(ctx)
