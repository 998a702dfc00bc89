"""The Artifacts page: a gallery of images (kept thumbnails) and a table of everything else.

Both are keyset pages straight from the store (``id < cursor``), so the 100,000th
artifact costs what the first does; "older" follows the cursor, "newest" starts over.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pandas as pd
import panel as pn

from dsagent.panel_app import untrusted
from dsagent.artifacts import schema
from dsagent.panel_app.widgets import Table, date_range_bounds, html_pane, image_tile, Notice, Poller, preloaded, artifact_link, current_user, human_size, page_frame, run_link, time_text

if TYPE_CHECKING:
    from dsagent.panel_app.context import AppContext

__all__ = ["page", "preload"]

GALLERY_SIZE = 24
TABLE_SIZE = 50
TABLE_DELAY_S = 0.5  # after load: the gallery's thumbnails first
COLUMNS = ["artifact", "name", "kind", "mime", "size", "run", "created", "download"]
# fit_columns with set widths (the name takes the rest): fit_data_fill measured every cell before the first paint
_WIDTHS = {"artifact": 80, "kind": 90, "mime": 250, "size": 90, "run": 70, "created": 170, "download": 90}


class KeysetPager:
    """Cursor bookkeeping for "newest / older / newer" over keyset pages."""

    def __init__(self) -> None:
        self.stack: list[str | None] = [None]  # cursors of the pages seen so far; the last one is shown
        self.next: str | None = None

    @property
    def cursor(self) -> str | None:
        return self.stack[-1]

    def reset(self) -> None:
        self.stack = [None]


def _frame(items) -> pd.DataFrame:
    return pd.DataFrame(
        [{"artifact": artifact_link(a.id), "name": untrusted.text(a.name), "kind": a.kind, "mime": a.mime, "size": human_size(a.size),
          "run": run_link(a.run_id), "created": time_text(a.created),
          "download": f'<a href="./api/artifacts/{a.id}" download>⬇</a>'} for a in items],
        columns=COLUMNS,
    )


def preload(ctx: "AppContext", args: dict[str, str]) -> dict:
    """The gallery's first page without filters, read before the page is built (the table's joins it later)."""
    return {"gallery": ctx.store.search_artifacts(kind="image", limit=GALLERY_SIZE)}


def page(ctx: "AppContext") -> pn.Column:
    notice = Notice()
    run = pn.widgets.TextInput(name="run id", placeholder="any", width=100)
    kind = pn.widgets.Select(name="table kind", options=["any", *[k for k in schema.ARTIFACT_KINDS if k != "image"]], value="any", width=120)
    mime = pn.widgets.TextInput(name="mime starts with", placeholder="e.g. text/", width=150)
    name = pn.widgets.TextInput(name="name (glob or text)", placeholder="e.g. *.png", width=170)
    dates = pn.widgets.DateRangePicker(name="created between", width=220)
    gallery = html_pane("loading…", min_height=200)
    table = Table(_frame([]), show_index=False, disabled=True, height=450, sizing_mode="stretch_width",
                  layout="fit_columns", widths=_WIDTHS, configuration={"columnDefaults": {"headerSort": False}}, name="artifacts",
                  formatters={c: {"type": "html"} for c in ("artifact", "name", "run", "download")})
    pagers = {"gallery": KeysetPager(), "table": KeysetPager()}
    buttons = {}
    for which in pagers:
        buttons[which] = (pn.widgets.Button(name="newest", width=80), pn.widgets.Button(name="◀ newer", width=90),
                          pn.widgets.Button(name="older ▶", width=90))

    def filters() -> dict:
        since, until = date_range_bounds(dates.value)
        run_id = None
        if (run.value_input or run.value or "").strip():
            try:
                run_id = int((run.value_input or run.value).strip())
            except ValueError:
                notice.show("The run id must be a number.", "danger")
        return dict(run_id=run_id, mime=mime.value or None, name=name.value or None, since=since, until=until)

    async def load(which: str) -> None:
        pager = pagers[which]

        async def work() -> None:
            common = filters()
            if which == "gallery":
                show(which, await ctx.read(ctx.store.search_artifacts, kind="image", limit=GALLERY_SIZE, cursor=pager.cursor, **common))
            else:
                chosen = None if kind.value == "any" else kind.value
                show(which, await ctx.read(ctx.store.search_artifacts, kind=chosen, exclude_kind=None if chosen else "image",
                                           limit=TABLE_SIZE, cursor=pager.cursor, **common))
        await notice.guard(work)

    def show(which: str, page_) -> None:
        if which == "gallery":
            gallery.object = "".join(image_tile(a, f"{a.name[:40]} · run {a.run_id}", eager=i < 8) for i, a in enumerate(page_.items)) \
            or "<i>no images match</i>"
        else:
            frame = _frame(page_.items)
            if not frame.equals(table.value):
                table.value = frame
        pager = pagers[which]
        pager.next = page_.next_cursor
        first, newer, older = buttons[which]
        first.disabled = newer.disabled = len(pager.stack) == 1
        older.disabled = pager.next is None

    def wire(which: str) -> None:
        first, newer, older = buttons[which]
        pager = pagers[which]

        async def on_first(_) -> None:
            pager.reset()
            await load(which)

        async def on_newer(_) -> None:
            if len(pager.stack) > 1:
                pager.stack.pop()
            await load(which)

        async def on_older(_) -> None:
            if pager.next is not None:
                pager.stack.append(pager.next)
            await load(which)

        first.on_click(on_first)
        newer.on_click(on_newer)
        older.on_click(on_older)

    for which in pagers:
        wire(which)

    async def reload(*_) -> None:
        for pager in pagers.values():
            pager.reset()
        await load("gallery")
        await load("table")

    for widget in (kind, dates):
        widget.param.watch(reload, "value")
    for widget in (run, mime, name):
        widget.param.watch(reload, "value")

    async def follow() -> None:  # new artifacts appear on the first pages; later pages stay put
        for which, pager in pagers.items():
            if pager.cursor is None:
                await load(which)

    first = preloaded()
    if first is not None:  # the first pages are in the document the browser receives
        for which, page_ in first.items():
            show(which, page_)
    # The table sits below the gallery, out of the first screen: it joins the page TABLE_DELAY_S after the browser
    # has shown the rest. Building a Tabulator (and its redraws) holds the browser's main thread for longer than the
    # whole gallery takes: in the first document it held back the thumbnails, and added right on load it still
    # landed before they had loaded (bench/dashboard.py traces). Its rows are read then and arrive with it in the
    # same message, so none are dropped by a Tabulator still being built (if that read fails, the poller's next one
    # fills it). (Without a preloaded gallery the first refresh fills both on load: then the table must be built
    # already, as before.)
    table_slot = pn.Column(sizing_mode="stretch_width", min_height=450)

    async def add_table() -> None:
        await asyncio.sleep(TABLE_DELAY_S)
        await load("table")  # read now, not in the preload: the page's first response waits for nothing the first screen lacks
        table_slot.append(table)

    if first is None:
        table_slot.append(table)
    else:
        pn.state.onload(add_table)
    Poller(follow, max(2000, ctx.poll_ms * 4), first=first is None)
    return page_frame(
        "/artifacts", "Artifacts", notice.pane, pn.Row(run, name, mime, dates),
        pn.pane.Markdown("### Images"), pn.Row(*buttons["gallery"]), gallery,
        pn.pane.Markdown("### Everything else"), pn.Row(kind, *buttons["table"]), table_slot,
        user=current_user(),
    )
