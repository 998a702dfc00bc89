"""A run's own page (``/run?id=N``): status, parameters, timings, family, live events, notebook, artifacts.

While the run is going the page reads its new events every poll interval (only
``seq > last``, so a long run costs no more per poll than a short one) and
streams them into the table; once the run has ended and everything is read,
polling stops.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pandas as pd
import panel as pn

from dsagent.panel_app import untrusted
from dsagent.panel_app.actions import cancel_run
from dsagent.panel_app.batch_view import BatchView
from dsagent.panel_app.components import not_found_page
from dsagent.panel_app.widgets import (Missing, html_pane, image_tile, Notice, Poller, preloaded, current_user, duration_text, page_frame, query_arg, run_link, sandboxed_iframe,
                                       status_badge, time_text)

if TYPE_CHECKING:
    from dsagent.artifacts.models import Event, Run
    from dsagent.panel_app.context import AppContext

__all__ = ["page", "preload"]

EVENT_COLUMNS = ["seq", "time", "type", "details"]


def _details(event: "Event") -> str:
    payload = event.payload
    if event.type == "cell_started":
        code = (payload.get("code") or "").strip().splitlines()
        return f"cell {payload.get('cell')}: {code[0][:120] if code else ''}"
    if event.type == "cell_finished":
        line = f"cell {payload.get('cell')} {payload.get('status')} in {payload.get('duration')} s, {payload.get('artifacts', 0)} artifacts"
        error = payload.get("error")
        if payload.get("status") == "died" and isinstance(error, dict) and error.get("evalue"):  # why the kernel died (issue 28), its first line
            line += ": " + str(error["evalue"]).splitlines()[0][:300]
        return line
    return json.dumps(payload, default=str)[:240]


def _events_frame(events: list["Event"]) -> pd.DataFrame:
    return pd.DataFrame([{"seq": e.seq, "time": e.time.strftime("%H:%M:%S.%f")[:-3], "type": e.type, "details": _details(e)}
                         for e in events], columns=EVENT_COLUMNS)


#: what a dashboard action event says on the run's "who" line
_ACTIONS = {"launched": "launched", "cancel_requested": "cancel asked"}


def _who(event: "Event") -> str | None:
    """``launched by alice``: an action taken from the dashboard (its event names the user), else None."""
    payload = event.payload
    if payload.get("via") != "dashboard" or "user" not in payload:
        return None
    what = _ACTIONS.get(event.type, event.type.replace("_", " "))
    return f"{what} by {payload['user']} at {event.time.strftime('%H:%M:%S')}"


def _summary(run: "Run", children, who: list[str]) -> str:
    rows = [
        ("status", status_badge(run.status) + (f" — {untrusted.text(run.error)}" if run.error else "")),
        ("kind", untrusted.text(run.kind)), ("title", untrusted.text(run.title or "")), ("backend", untrusted.text(run.backend or "")),
        ("created", time_text(run.created)), ("started", time_text(run.started)), ("finished", time_text(run.finished)),
        ("duration", duration_text(run)),
        ("owner", untrusted.text(f"pid {run.owner_pid} on {run.owner_host}") if run.owner_pid else ""),
    ]
    if run.parent_id is not None:
        rows.append(("parent", run_link(run.parent_id)))
    if children.total:
        more = f" (+{children.total - len(children.items)} more)" if children.total > len(children.items) else ""
        rows.append(("children", ", ".join(run_link(c.id) for c in children.items) + more))
    if who:
        rows.append(("who", untrusted.text("; ".join(who)) + " (from the dashboard)"))
    params = json.dumps(run.params, indent=1, default=str) if run.params else "{}"
    rows.append(("parameters", f"<pre style='margin:0'>{untrusted.text(params[:5000])}</pre>"))
    return "<table class='ds-kv'>" + "".join(f"<tr><td><b>{k}</b></td><td>{v}</td></tr>" for k, v in rows) + "</table>"


def preload(ctx: "AppContext", args: dict[str, str]) -> list["Event"] | None:
    """The run's first events, read before the page is built: the events table comes with the page. A run that
    does not exist raises NotFound here, and the page is the not-found page."""
    try:
        run_id = int(args.get("id", ""))
    except ValueError:
        return None  # the page says what is wrong with the address
    ctx.store.get_run(run_id)
    return ctx.store.events(run_id, after=0, limit=500)


def page(ctx: "AppContext") -> pn.Column:
    raw = query_arg("id")
    notice = Notice()
    try:
        run_id = int(raw or "")
    except ValueError:
        return not_found_page("/runs", "Run", f"No run id {untrusted.text(raw or '')} in the address", "./runs", "All runs",
                              user=current_user())
    first = preloaded()
    if isinstance(first, Missing):
        return not_found_page("/runs", f"Run {run_id}", f"There is no run {run_id} in this workspace", "./runs", "All runs",
                              user=current_user())

    summary = html_pane("loading…")
    events = pn.widgets.Tabulator(_events_frame([]), show_index=False, disabled=True, height=300, sizing_mode="stretch_width",
                                  layout="fit_data_fill", name="events")
    downloads = html_pane("")
    cancel = pn.widgets.Button(name="Cancel run", button_type="danger", width=120, visible=False)
    message = html_pane("")
    # made up front and shown when the notebook exists (changing a layout's children later rendered unreliably)
    notebook_title = pn.pane.Markdown("### Executed notebook", visible=False)
    notebook = sandboxed_iframe("about:blank")
    notebook.visible = False
    artifacts = html_pane("")
    batch = BatchView(ctx, run_id)  # shows itself only for a batch run
    state: dict = {"after": 0, "status": None, "artifacts": -1, "who": []}

    async def refresh() -> None:
        async def work() -> None:
            run = await ctx.read(ctx.store.get_run, run_id)
            new = await ctx.read(ctx.store.events, run_id, after=state["after"], limit=500)
            if new:
                state["after"] = new[-1].seq
                events.stream(_events_frame(new), follow=True)
                state["who"].extend(line for line in map(_who, new) if line)
            count = await ctx.read(ctx.store.artifact_count, run_id)
            if run.status != state["status"] or count != state["artifacts"] or new:
                children = await ctx.read(ctx.store.search_runs, parent_id=run_id, limit=20, sort="id", descending=False)
                summary.object = _summary(run, children, state["who"])
                cancel.visible = run.status in ("running", "queued")
            if run.status != state["status"] or count != state["artifacts"]:
                await _show_artifacts(run)
            state["status"], state["artifacts"] = run.status, count
            await batch.update(run)
            if run.done and not new:
                poller.stop()  # everything is read; nothing more will come
        if not await notice.guard(work) and notice.missing:
            poller.stop()

    async def _show_artifacts(run: "Run") -> None:
        page_ = await ctx.read(ctx.store.search_artifacts, run_id=run_id, limit=200)
        items = sorted(page_.items, key=lambda a: a.id)
        nb = [a for a in items if a.kind == "notebook"]
        links = [f'<a href="./api/runs/{run_id}/export.zip" download>⬇ all artifacts (zip with manifest)</a>']
        if nb:
            links.insert(0, f'<a href="./api/artifacts/{nb[-1].id}" download>⬇ notebook ({untrusted.text(nb[-1].name)})</a>')
            if state.get("notebook_id") != nb[-1].id:
                state["notebook_id"] = nb[-1].id
                notebook.object = sandboxed_iframe(f"./api/artifacts/{nb[-1].id}/preview").object
                notebook.visible = notebook_title.visible = True
        downloads.object = " &nbsp;·&nbsp; ".join(links)
        tiles = []
        for a in items:
            if a.kind == "image":
                tiles.append(image_tile(a, a.name[:40]))
            else:
                tiles.append(f'<div class="ds-tile"><a href="./artifact?id={a.id}">{untrusted.text(a.name[:50])}</a><br>{untrusted.text(a.kind)} · '
                             f'{untrusted.text(a.mime)}</div>')
        more = " (first 200)" if page_.next_cursor else ""
        artifacts.object = f"<h3>Artifacts{more}</h3>" + ("".join(tiles) or "<i>none yet</i>")

    async def on_cancel(_) -> None:
        cancel.disabled = True
        try:
            text = await ctx.read(cancel_run, ctx.store, run_id, current_user() or "anonymous", ctx.scheduler, ctx.services.get("chat_host"))
            message.object = untrusted.text(text)
        except Exception as exc:  # shown on the page; the run is untouched
            message.object = f"<span style='color:#dc3545'>{untrusted.text(str(exc))}</span>"
            cancel.disabled = False

    cancel.on_click(on_cancel)
    if first:  # streamed rows could reach the table while the browser still builds it, which drops them
        events.value = _events_frame(first)
        state["after"] = first[-1].seq
        state["who"].extend(line for line in map(_who, first) if line)
    poller = Poller(refresh, ctx.poll_ms)
    body = [notice.pane, pn.Row(cancel, message), summary, batch.layout(), downloads, pn.pane.Markdown("### Events"), events, notebook_title, notebook, artifacts]
    return page_frame("/runs", f"Run {run_id}", *body, user=current_user())
