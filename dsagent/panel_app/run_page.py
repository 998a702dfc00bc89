"""A run's own page (``/run?id=N``): its status and actions in the title row, why it failed, its details and
parameters, a batch's grid and children (``batch_view``), its events as a timeline (``run_events``), the executed
notebook and the artifacts.

The preload reads the run, its newest events, its first children and artifacts before the page is built, so they
come with the page. While the run goes on the page polls: the run's row, the events after the newest one read,
the artifact count; a part is drawn again only when what it shows changed. Once the run has ended and everything
is read, polling stops.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import panel as pn
import param

from dsagent.artifacts.models import Run
from dsagent.panel_app import formats, untrusted
from dsagent.panel_app.actions import cancel_run
from dsagent.panel_app.batch_view import BatchView
from dsagent.panel_app.components import card, empty_state, loading_placeholder, not_found_page, status_chip
from dsagent.panel_app.layout import after_first_paint, page_frame
from dsagent.panel_app.run_events import EventsView, first_window
from dsagent.panel_app.widgets import Missing, Notice, Poller, current_user, html_pane, image_tile, preloaded, query_arg, run_link, sandboxed_iframe

if TYPE_CHECKING:
    from dsagent.artifacts.models import Artifact, Event, Page
    from dsagent.artifacts.run_queries import EventOutline, RunTablePage
    from dsagent.panel_app.context import AppContext

__all__ = ["RunView", "RunFirst", "page", "preload", "error_html", "who_line"]

CHILD_LINKS = 20  # children linked in the details (a batch lists all of its own, page by page)
ARTIFACTS_SHOWN = 200
ACTIVE = ("running", "queued")

_CSS = """
.ds-kv {border-collapse: collapse; width: 100%}
.ds-kv th {text-align: left; vertical-align: top; font-weight: 500; color: var(--ds-muted); padding: 3px 16px 3px 0; white-space: nowrap;
  width: 1%}
.ds-kv td {padding: 3px 0; vertical-align: top; overflow-wrap: anywhere}
.ds-kv code {white-space: pre-wrap}
.ds-error-head {font-weight: 500; color: var(--ds-failed); overflow-wrap: anywhere; margin: 2px 0 6px 0}
.ds-error pre {margin: 4px 0 8px 0; padding: 8px 10px; border-radius: 6px; background: var(--ds-code-bg, #f5f5f5);
  white-space: pre-wrap; overflow-wrap: anywhere; font-size: 0.85rem; max-height: 420px; overflow-y: auto}
.ds-links {display: flex; flex-wrap: wrap; gap: 6px 18px; margin: 0 0 8px 0}
.ds-files {border-collapse: collapse; width: 100%; min-width: 420px}
.ds-files th {text-align: left; font-weight: 500; color: var(--ds-muted); font-size: 0.85rem; padding: 4px 8px;
  border-bottom: 1px solid var(--ds-border)}
.ds-files td {padding: 4px 8px; border-bottom: 1px solid var(--ds-border); overflow-wrap: anywhere}
"""
#: what the error card is called by the run's status
_ERROR_TITLES = {"failed": "Why it failed", "cancelled": "Why it stopped", "unverified": "Why it is unverified"}
#: what a dashboard action event says on the run's "who" line
_ACTIONS = {"launched": "launched", "cancel_requested": "cancel asked"}


@dataclass(frozen=True)
class RunFirst:
    """What the preload read: the page's first data."""

    run: Run
    outline: "EventOutline"
    events: list["Event"]
    children: "RunTablePage"
    artifact_count: int
    artifacts: "Page[Artifact]"


def preload(ctx: "AppContext", args: dict[str, str]) -> RunFirst | None:
    """The run, its newest events, first children and artifacts, read before the page is built. A run that does not
    exist raises NotFound here, and the page is the not-found page."""
    try:
        run_id = int(args.get("id", ""))
    except ValueError:
        return None  # the page says what is wrong with the address
    store = ctx.store
    run = store.get_run(run_id)
    outline, events = first_window(store, run_id)
    return RunFirst(run, outline, events, _children(store, run_id), store.artifact_count(run_id),
                    store.search_artifacts(run_id=run_id, limit=ARTIFACTS_SHOWN))


def _children(store: Any, run_id: int) -> "RunTablePage":
    return store.search_runs(parent_id=run_id, limit=CHILD_LINKS, sort="id", descending=False)


# -- what the parts show (plain functions of the data) -------------------------------------------------------------

def who_line(actions: list["Event"]) -> str:
    """``launched by alice at 10:02:03; cancel asked by bob at 10:04:00`` (escaped), from the dashboard's action events."""
    parts = [f"{_ACTIONS.get(e.type, e.type.replace('_', ' '))} by {e.payload['user']} at {e.time.strftime('%H:%M:%S')}" for e in actions]
    return untrusted.text("; ".join(parts))


def error_html(error: str) -> str:
    """A run's error, readable: its first line as the heading, the rest (a traceback's tail, the hint of a sweep's
    error) below it, and a dead kernel's last printed lines in a block of their own."""
    from dsagent.kernel_gateway.kernel_death import LAST_LINES_HEADING

    reason, heading, printed = error.partition(LAST_LINES_HEADING)
    reason = re.sub(r"; (most common error|hint: )", r"\n\1", reason.strip())  # a sweep's one-line error, a line per part
    first, _, rest = reason.partition("\n")
    html = f"<div class='ds-error'><div class='ds-error-head'>{untrusted.text(first)}</div>"
    if rest.strip():
        html += f"<pre>{untrusted.text(rest.strip())}</pre>"
    if heading:
        html += f"<div class='ds-muted'>the last lines it printed:</div><pre>{untrusted.text(printed.rstrip())}</pre>"
    return html + "</div>"


def _value(value: Any) -> str:
    if isinstance(value, (dict, list, tuple)):
        return f"<code>{untrusted.text(json.dumps(value, default=str)[:2000])}</code>"
    return untrusted.text(str(value)[:2000])


def kv_table(rows: list[tuple[str, str]]) -> str:
    """Label/value rows (labels are the page's own; values already HTML)."""
    return "<table class='ds-kv'>" + "".join(f"<tr><th scope='row'>{k}</th><td>{v}</td></tr>" for k, v in rows if v) + "</table>"


def _timing_rows(run: Run, now: datetime) -> list[tuple[str, str]]:
    took = "still running" if run.started and run.finished is None else formats.run_duration(run)  # "started" says since when
    return [("created", formats.time_cell(run.created, now)), ("started", formats.time_cell(run.started, now) or "not yet"),
            ("finished", formats.time_cell(run.finished, now)), ("duration", took)]


def details_html(run: Run, children: "RunTablePage | None", actions: list["Event"], now: datetime) -> str:
    """The run's details: kind, title, backend, timings, owner, schedule, family, who acted from the dashboard."""
    rows = [("kind", untrusted.text(run.kind)), ("title", untrusted.text(run.title or "")), ("backend", untrusted.text(run.backend or "")),
            *_timing_rows(run, now),
            ("owner", untrusted.text(f"pid {run.owner_pid} on {run.owner_host}") if run.owner_pid and run.status in ACTIVE else ""),
            ("schedule", f"<a href='./schedules'>{untrusted.text(run.schedule_id)}</a>" if run.schedule_id else ""),
            ("parent", f"run {run_link(run.parent_id)}" if run.parent_id is not None else "")]
    if children is not None and children.total:
        if run.kind == "batch":
            rows.append(("children", f"{children.total:,} (listed below)"))
        else:
            more = f" and {children.total - len(children.items):,} more" if children.total > len(children.items) else ""
            rows.append(("children", ", ".join(run_link(c.id) for c in children.items) + more))
    if actions:
        rows.append(("who", who_line(actions) + " <span class='ds-muted'>(from the dashboard)</span>"))
    return kv_table(rows)


def parameters_html(run: Run) -> str:
    if not run.params:
        hint = "It ran with the notebook's own values." if run.kind in ("notebook", "batch-child") else "This run was given none."
        return empty_state("No parameters", hint, icon_name="page")
    return kv_table([(untrusted.text(k), _value(v)) for k, v in run.params.items()])


def artifacts_html(run: Run, count: int, page_: "Page[Artifact]") -> str:
    """The run's artifacts: images as thumbnails, the rest as a list; what is true when there are none."""
    items = sorted(page_.items, key=lambda a: a.id)
    if not items:
        if run.kind == "batch":
            return empty_state("No artifacts of the batch itself", "Each child keeps its own: open a child from the children list "
                               "above; the comparison shows their plots.", icon_name="artifacts")
        if not run.done:
            return empty_state("No artifacts yet", "Plots, tables and files show here as the run makes them.", icon_name="artifacts")
        return empty_state("No artifacts", "This run saved no plots, tables or files.", icon_name="artifacts")
    notebooks = [a for a in items if a.kind == "notebook"]
    links = [f"<a href='./api/runs/{run.id}/export.zip' download>⬇ all {count:,} artifacts (zip with a manifest)</a>"]
    if notebooks:
        links.insert(0, f"<a href='./api/artifacts/{notebooks[-1].id}' download>⬇ notebook ({untrusted.text(notebooks[-1].name)})</a>")
    tiles = "".join(image_tile(a, a.name[:40]) for a in items if a.kind == "image")
    rows = "".join(f"<tr><td><a href='./artifact?id={a.id}'>{untrusted.text(a.name[:80])}</a></td><td>{untrusted.text(a.kind)}</td>"
                   f"<td>{formats.size(a.size)}</td><td>{'' if a.cell is None else a.cell}</td></tr>" for a in items if a.kind != "image")
    files = (f"<div class='ds-scroll'><table class='ds-files'><tr><th>name</th><th>kind</th><th>size</th><th>cell</th></tr>{rows}</table></div>"
             if rows else "")
    more = f"<p class='ds-muted'>The first {len(items)} of {count:,}: the zip has them all.</p>" if count > len(items) else ""
    return f"<div class='ds-links'>{''.join(links)}</div>{tiles}{files}{more}"


# -- the page ------------------------------------------------------------------------------------------------------

class RunView(pn.viewable.Viewer):
    """A run's page. Its state is the last read of the run, its children and artifacts; each part is drawn from
    them when they change (``_draw_*``). ``on_cancel`` is the Cancel button's handler."""

    run = param.ClassSelector(class_=Run, default=None, allow_None=True, doc="the run's row as last read")
    children = param.Parameter(default=None, doc="the first CHILD_LINKS children (a RunTablePage)")
    artifacts = param.Parameter(default=None, doc="(how many, the first ARTIFACTS_SHOWN) of the run's artifacts")
    minute = param.Parameter(default=None, doc="now, to the minute: relative times are drawn again when it changes")

    def __init__(self, ctx: "AppContext", run_id: int, first: RunFirst | None, **params: Any) -> None:
        super().__init__(**params)
        self.ctx, self.run_id = ctx, run_id
        self.notice = Notice()
        self.events = EventsView(ctx, run_id, (first.outline, first.events) if first else None)
        self.batch = BatchView(ctx, run_id, is_batch=first is not None and first.run.kind == "batch")
        self._build(first)
        if first is not None:
            self.param.update(run=first.run, children=first.children, artifacts=(first.artifact_count, first.artifacts),
                              minute=formats.minute_now())
        self.poller = Poller(self.refresh, ctx.poll_ms, first=first is None)

    def _build(self, first: RunFirst | None) -> None:
        self.chip = html_pane(status_chip(first.run.status) if first else "", width=130, margin=(4, 0))
        self.cancel = None
        if first is None or first.run.status in ACTIVE:  # a run that has ended has nothing to cancel
            import panel_material_ui as pmui

            self.cancel = pmui.Button(label="Cancel run", color="error", variant="outlined")
            self.cancel.on_click(self.on_cancel)
        self.message = html_pane("", visible=False)
        self.error_title = html_pane("", margin=0)
        self.error = html_pane("", stylesheets=[_CSS])
        self.error_card = card(self.error_title, self.error, visible=False)
        self.details = html_pane(loading_placeholder(5), stylesheets=[_CSS])
        self.parameters = html_pane(loading_placeholder(2), stylesheets=[_CSS])
        self.files = html_pane(loading_placeholder(2), stylesheets=[_CSS])
        # made up front and shown once the notebook exists (a layout's children changed later rendered unreliably)
        self.notebook = sandboxed_iframe("about:blank")
        self.notebook_card = card(self.notebook, title="Executed notebook", visible=False)
        self._notebook_id: int | None = None
        self.cancel_slot = None if self.cancel is None else pn.Column(after_first_paint(self.cancel, height=38, margin=0), width=130, height=40,
                                                                     sizing_mode="fixed", margin=0)
        self.events.param.watch(lambda _: self._draw_details(), "actions")

    def __panel__(self) -> Any:
        actions: list[Any] = [self.chip]
        if self.cancel_slot is not None:
            actions.append(self.cancel_slot)
        side_by_side = pn.FlexBox(card(self.details, title="Details", styles={"flex": "1 1 340px"}),
                                  card(self.parameters, title="Parameters", styles={"flex": "1 1 340px"}),
                                  flex_wrap="wrap", gap="0 12px", sizing_mode="stretch_width")
        body = [self.notice.pane, self.message, self.error_card, side_by_side]
        if self.run is None or self.run.kind == "batch":
            body.append(self.batch)
        body += [self.events, self.notebook_card, card(self.files, title="Artifacts")]
        title = f"Run {self.run_id}" + (f": {self.run.title}" if self.run is not None and self.run.title else "")
        return page_frame("/runs", title, *body, actions=actions, user=current_user())

    # -- reading ---------------------------------------------------------------------------------------------

    async def refresh(self) -> None:
        async def work() -> None:
            run = await self.ctx.read(self.ctx.store.get_run, self.run_id)
            new_events = await self.events.poll(run.done)
            count = await self.ctx.read(self.ctx.store.artifact_count, self.run_id)
            if run != self.run or new_events:  # a chat's turns, a batch's children: new ones come with events
                self.children = await self.ctx.read(_children, self.ctx.store, self.run_id)
            if self.artifacts is None or self.run is None or count != self.artifacts[0] or run.status != self.run.status:
                found = await self.ctx.read(self.ctx.store.search_artifacts, run_id=self.run_id, limit=ARTIFACTS_SHOWN)
                self.artifacts = (count, found)
            self.run = run
            if formats.minute_now() != self.minute:
                self.minute = formats.minute_now()
            batch_done = await self.batch.update(run)
            if run.done and not new_events and batch_done:
                self.poller.stop()  # everything is read; nothing more will come
        if not await self.notice.guard(work) and self.notice.missing:
            self.poller.stop()

    # -- drawing ---------------------------------------------------------------------------------------------

    @param.depends("run", watch=True)
    def _draw_status(self) -> None:
        run = self.run
        self.chip.object = status_chip(run.status)
        if self.cancel_slot is not None and run.status not in ACTIVE:
            self.cancel_slot.visible = False
        self.error_card.visible = bool(run.error)
        if run.error:
            self.error.object = error_html(run.error)
            self.error_title.object = f"<h2 class='ds-card-title'>{_ERROR_TITLES.get(run.status, 'Error')}</h2>"
        self.parameters.object = parameters_html(run)

    @param.depends("run", "children", "minute", watch=True)
    def _draw_details(self) -> None:
        if self.run is not None:
            self.details.object = details_html(self.run, self.children, self.events.actions, self.minute or formats.minute_now())

    @param.depends("artifacts", watch=True)
    def _draw_artifacts(self) -> None:
        if self.run is None or self.artifacts is None:
            return
        count, found = self.artifacts
        self.files.object = artifacts_html(self.run, count, found)
        notebooks = sorted((a for a in found.items if a.kind == "notebook"), key=lambda a: a.id)
        if notebooks and notebooks[-1].id != self._notebook_id:
            self._notebook_id = notebooks[-1].id
            self.notebook.object = sandboxed_iframe(f"./api/artifacts/{self._notebook_id}/preview").object
            self.notebook_card.visible = True

    # -- actions ---------------------------------------------------------------------------------------------

    async def on_cancel(self, _: Any = None) -> None:
        """Cancel asks the run's owner to stop it (``actions.cancel_run``); the page shows what it answered."""
        self.cancel.disabled = True
        try:
            text = await self.ctx.read(cancel_run, self.ctx.store, self.run_id, current_user() or "anonymous", self.ctx.scheduler,
                                       self.ctx.services.get("chat_host"))
            self.message.object = untrusted.text(text)
        except Exception as exc:  # shown on the page; the run is untouched
            self.message.object = f"<span style='color:var(--ds-failed)'>{untrusted.text(str(exc))}</span>"
            self.cancel.disabled = False
        self.message.visible = True


def page(ctx: "AppContext") -> Any:
    raw = query_arg("id")
    first = preloaded()
    try:
        run_id = int(raw or "")
    except ValueError:
        return not_found_page("/runs", "Run", f"No run id {untrusted.text(raw or '')} in the address", "./runs", "All runs",
                              user=current_user())
    if isinstance(first, Missing):
        return not_found_page("/runs", f"Run {run_id}", f"There is no run {run_id} in this workspace", "./runs", "All runs",
                              user=current_user())
    return RunView(ctx, run_id, first)
