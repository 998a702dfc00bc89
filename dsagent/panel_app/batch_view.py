"""The part of a run's page that only a ``batch`` run has: its children's progress, then the comparison.

While the sweep runs, every poll reads the children's counts by status (one
grouped query, whatever the size of the sweep) and one page of the children
table (links to each child's run page). Once the batch has ended it shows the
comparison of ``batch_compare.batch_table`` (parameters x recorded scalars x
status x duration) in a sortable Tabulator with each child's plots as
thumbnails, and CSV/Parquet downloads made from the same table
(``batch_compare.table_bytes``, what ``dsagent batch compare`` writes).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pandas as pd
import panel as pn

from dsagent.artifacts.schema import TERMINAL_STATUSES
from dsagent.panel_app import untrusted
from dsagent.panel_app.widgets import html_pane, run_link, status_badge

if TYPE_CHECKING:
    from dsagent.artifacts.models import Run
    from dsagent.panel_app.context import AppContext

__all__ = ["BatchView"]

CHILD_PAGE = 50
MAX_THUMBNAIL_CHILDREN = 200  # plots are read per child: past this many, the table says so instead of reading them all
_ORDER = ("succeeded", "failed", "unverified", "cancelled", "running", "queued")


def _duration(run: Run) -> str:
    if run.started is None:
        return ""
    if run.finished is None:
        return "running"
    return f"{(run.finished - run.started).total_seconds():.1f} s"


def _children_frame(children: list[Run]) -> pd.DataFrame:
    return pd.DataFrame([{"run": run_link(c.id), "status": status_badge(c.status), "parameters": untrusted.text(json.dumps(c.params, default=str)),
                          "duration": _duration(c), "error": untrusted.text((c.error or "")[:160])} for c in children],
                        columns=["run", "status", "parameters", "duration", "error"])


def _progress_html(counts: dict[str, int]) -> str:
    total = sum(counts.values())
    done = sum(counts.get(s, 0) for s in TERMINAL_STATUSES)
    parts = " ".join(f"{status_badge(s)} {counts[s]}" for s in _ORDER if counts.get(s))
    return f"<b class='ds-batch-progress'>{done} of {total} children finished</b> &nbsp; {parts}"


def progress_color(counts: dict[str, int]) -> str:
    """Green while no child failed, amber once some did, red when every finished child failed."""
    failed = sum(counts.get(s, 0) for s in ("failed", "cancelled", "unverified"))
    if not failed:
        return "success"
    return "danger" if not counts.get("succeeded") else "warning"


def _comparison_frame(frame: pd.DataFrame, plots: dict[int, list[str]]) -> pd.DataFrame:
    """The comparison as shown: escaped titles (record and parameter names come from the runs' code), then our
    own HTML columns "run" and "plots"; a record that has one of those names keeps its values under another title."""
    ids = list(frame["run_id"])
    shown = untrusted.table(frame.drop(columns=["run_id"]))
    shown = shown.rename(columns={c: f"{c} (record)" for c in ("run", "plots") if c in shown.columns})
    shown.insert(0, "run", [run_link(r) for r in ids])
    shown["plots"] = ["".join(plots.get(int(r), [])) for r in ids]
    return shown

class BatchView:
    """Built once per page; ``update(run)`` on every poll of a batch run."""

    def __init__(self, ctx: AppContext, run_id: int) -> None:
        self.ctx, self.run_id = ctx, run_id
        self.title = pn.pane.Markdown("### Children", visible=False)
        self.progress_text = html_pane("")
        self.bar = pn.indicators.Progress(value=0, max=1, width=400, bar_color="success", visible=False)
        self.children = pn.widgets.Tabulator(_children_frame([]), show_index=False, disabled=True, height=260, sizing_mode="stretch_width",
                                             layout="fit_data_fill", name="children", visible=False,
                                             formatters={c: {"type": "html"} for c in ("run", "status", "parameters", "error")})
        self.prev_button = pn.widgets.Button(name="◀", width=50, disabled=True, visible=False)
        self.next_button = pn.widgets.Button(name="▶", width=50, disabled=True, visible=False)
        self.position = html_pane("", width=200)
        self.compare_title = pn.pane.Markdown("### Comparison", visible=False)
        # the comparison's table is made once its data is there: a Tabulator made hidden and empty, then given
        # new columns and shown in one update, at times rendered no row at all (seen under load in CI)
        self.compare = pn.Column(sizing_mode="stretch_width")
        self.csv = pn.widgets.FileDownload(label="⬇ comparison as CSV", visible=False, width=220, button_type="light",
                                           callback=lambda: self._file("csv"), filename=f"batch-{run_id}-comparison.csv")
        self.parquet = pn.widgets.FileDownload(label="⬇ comparison as Parquet", visible=False, width=240, button_type="light",
                                               callback=lambda: self._file("parquet"), filename=f"batch-{run_id}-comparison.parquet")
        self.state: dict[str, Any] = {"offset": 0, "total": 0, "compared": False, "table": None}
        self.prev_button.on_click(self._newer)
        self.next_button.on_click(self._older)

    def layout(self) -> pn.Column:
        return pn.Column(self.title, pn.Row(self.progress_text, self.bar), pn.Row(self.prev_button, self.next_button, self.position),
                         self.children, self.compare_title, pn.Row(self.csv, self.parquet), self.compare, sizing_mode="stretch_width")

    async def update(self, run: Run) -> None:
        """Read the children's progress (every poll) and, once the batch has ended, the comparison (once)."""
        if run.kind != "batch":
            return
        counts = await self.ctx.read(self.ctx.store.child_status_counts, self.run_id)
        total = sum(counts.values())
        self.progress_text.object = _progress_html(counts)
        self.bar.max = max(total, 1)
        self.bar.value = sum(counts.get(s, 0) for s in TERMINAL_STATUSES)
        self.bar.bar_color = progress_color(counts)
        for widget in (self.title, self.bar, self.children, self.prev_button, self.next_button):
            widget.visible = True
        await self._children_page()
        if run.done and not self.state["compared"]:
            await self._comparison()

    async def _children_page(self) -> None:
        page = await self.ctx.read(self.ctx.store.search_runs, parent_id=self.run_id, sort="id", descending=False,
                                   offset=self.state["offset"], limit=CHILD_PAGE)
        frame = _children_frame(page.items)
        if not frame.equals(self.children.value):
            self.children.value = frame
            self.children.height = min(260, 45 + 30 * len(frame))  # no blank band under a short list
        self.state["total"] = page.total
        last = min(page.offset + CHILD_PAGE, page.total)
        self.position.object = f"children {page.offset + 1 if page.total else 0}–{last} of {page.total}"
        self.prev_button.disabled = page.offset == 0
        self.next_button.disabled = last >= page.total

    async def _move(self, step: int) -> None:
        self.state["offset"] = max(0, self.state["offset"] + step * CHILD_PAGE)
        await self._children_page()

    async def _older(self, _: Any) -> None:
        await self._move(1)

    async def _newer(self, _: Any) -> None:
        await self._move(-1)

    async def _comparison(self) -> None:
        from dsagent.runs.batch_compare import batch_table

        table = await self.ctx.read(batch_table, self.ctx.store, self.run_id)
        plots = await self.ctx.read(self._plots, [row["run_id"] for row in table.rows[:MAX_THUMBNAIL_CHILDREN]])
        frame = _comparison_frame(table.to_frame(), plots)
        self.compare.objects = [pn.widgets.Tabulator(frame, show_index=False, disabled=True, sizing_mode="stretch_width", layout="fit_data_fill",
                                                     name="comparison", pagination="local", page_size=25,
                                                     formatters={"run": {"type": "html"}, "plots": {"type": "html"}},
                                                     widths={"plots": 220})]  # room for three thumbnails side by side
        self.state["table"], self.state["compared"] = table, True
        for widget in (self.compare_title, self.csv, self.parquet):
            widget.visible = True

    def _plots(self, run_ids: list[int]) -> dict[int, list[str]]:
        """Thumbnails (at most 3) of each child's images, as links to the artifact."""
        found: dict[int, list[str]] = {}
        for run_id in run_ids:
            page = self.ctx.store.search_artifacts(run_id=run_id, kind="image", limit=3)
            found[run_id] = [f'<a href="./artifact?id={a.id}"><img src="./api/artifacts/{a.id}/thumb" alt="{untrusted.text(a.name)}" '
                             f'style="height:60px;margin-right:4px"></a>' for a in sorted(page.items, key=lambda a: a.id)]
        return found

    def _file(self, fmt: str) -> Any:
        import io

        from dsagent.runs.batch_compare import table_bytes

        table = self.state["table"]
        if table is None:
            return io.BytesIO(b"")
        return io.BytesIO(table_bytes(table, fmt)[2])
