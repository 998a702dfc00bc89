"""The Runs page: a table of runs, filtered and sorted in the store, one page at a time, newest first.

The table holds one page (the store counts and sorts, so 10,000 runs cost what
50 do) and follows new runs: it re-reads its page every poll interval and
updates only when something changed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd
import panel as pn

from dsagent.panel_app import untrusted
from dsagent.artifacts import schema
from dsagent.panel_app.widgets import Table, date_range_bounds, Notice, Poller, preloaded, current_user, duration_text, page_frame, run_link, status_badge, time_text

if TYPE_CHECKING:
    from dsagent.panel_app.context import AppContext

__all__ = ["page", "preload", "runs_frame"]

PAGE_SIZE = 50
_SORTS = {"newest first": ("id", True), "oldest first": ("id", False), "longest": ("duration", True), "title": ("title", False),
          "status": ("status", False), "kind": ("kind", False)}
COLUMNS = ["run", "kind", "status", "title", "started", "duration", "backend", "parent"]
_WIDTHS = {"run": 80, "kind": 110, "status": 110, "started": 170, "duration": 100, "backend": 100, "parent": 80}  # the title takes the rest


def runs_frame(runs) -> pd.DataFrame:
    return pd.DataFrame(
        [{"run": run_link(r.id), "kind": r.kind, "status": status_badge(r.status), "title": untrusted.text(r.title or ""),
          "started": time_text(r.started or r.created), "duration": duration_text(r), "backend": r.backend or "",
          "parent": run_link(r.parent_id)} for r in runs],
        columns=COLUMNS,
    )


def preload(ctx: "AppContext", args: dict[str, str]):
    """The first page with the default filters (newest first), read before the page is built."""
    return ctx.store.search_runs(offset=0, limit=PAGE_SIZE, sort="id", descending=True)


def page(ctx: "AppContext") -> pn.Column:
    notice = Notice()
    kind = pn.widgets.Select(name="kind", options=["any", *schema.RUN_KINDS], value="any", width=130)
    status = pn.widgets.Select(name="status", options=["any", *schema.RUN_STATUSES], value="any", width=130)
    text = pn.widgets.TextInput(name="title contains", placeholder="text in the title", width=200)
    dates = pn.widgets.DateRangePicker(name="created between", width=220)
    sort = pn.widgets.Select(name="sort", options=list(_SORTS), value="newest first", width=140)
    prev_button = pn.widgets.Button(name="◀ newer", width=90, disabled=True)
    next_button = pn.widgets.Button(name="older ▶", width=90, disabled=True)
    position = pn.pane.HTML("", width=260)
    table = Table(
        # fit_columns with set widths: fit_data_fill measured every cell first, which made the first page
        # render markedly slower (bench/dashboard.py)
        runs_frame([]), show_index=False, disabled=True, sizing_mode="stretch_width", height=520, layout="fit_columns", widths=_WIDTHS,
        formatters={"run": {"type": "html"}, "status": {"type": "html"}, "parent": {"type": "html"}, "title": {"type": "html"}},
        configuration={"columnDefaults": {"headerSort": False}}, name="runs",
    )
    state = {"offset": 0, "total": 0}

    def filters() -> dict:
        since, until = date_range_bounds(dates.value)
        column, descending = _SORTS[sort.value]
        return dict(kind=None if kind.value == "any" else kind.value, status=None if status.value == "any" else status.value,
                    text=text.value_input or text.value or None, since=since, until=until, sort=column, descending=descending)

    async def refresh(*_) -> None:
        async def work() -> None:
            show(await ctx.read(ctx.store.search_runs, offset=state["offset"], limit=PAGE_SIZE, **filters()))
        await notice.guard(work)

    def show(result) -> None:
        frame = runs_frame(result.items)
        if not frame.equals(table.value):
            table.value = frame
        state["total"] = result.total
        last = min(result.offset + PAGE_SIZE, result.total)
        position.object = f"runs {result.offset + 1 if result.total else 0}–{last} of {result.total}"
        prev_button.disabled = result.offset == 0
        next_button.disabled = last >= result.total

    async def first_page(*_) -> None:
        state["offset"] = 0
        await refresh()

    async def move(step: int) -> None:
        state["offset"] = max(0, state["offset"] + step * PAGE_SIZE)
        await refresh()

    async def older(_) -> None:
        await move(1)

    async def newer(_) -> None:
        await move(-1)

    for widget in (kind, status, sort, dates):
        widget.param.watch(first_page, "value")
    text.param.watch(first_page, "value_input")
    next_button.on_click(older)
    prev_button.on_click(newer)
    first = preloaded()
    if first is not None:  # the first page is in the document the browser receives
        show(first)
    Poller(refresh, max(1000, ctx.poll_ms * 2), first=first is None)
    controls = pn.Row(kind, status, text, dates, sort)
    pager = pn.Row(prev_button, next_button, position)
    return page_frame("/runs", "Runs", notice.pane, controls, pager, table, user=current_user())
