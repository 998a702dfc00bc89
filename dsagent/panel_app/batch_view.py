"""The part of a run's page that only a ``batch`` run has: its grid, its children, then the comparison.

- **The grid**: every swept parameter with its values, read once from the children (each child is one set of
  values, made when the batch starts), and how many children that makes.
- **The children**: while the sweep runs, every poll reads the children's counts by status (one grouped query,
  whatever the size of the sweep) and one page of the children table: a link to each child's page, its status
  chip, the parameters that vary, its duration and the first line of its error.
- **The comparison**, once the batch has ended: ``batch_compare.batch_table`` (parameters x recorded scalars x
  status x duration) in a sortable table with each child's plots as thumbnails, and CSV/Parquet downloads made
  from the same table (``batch_compare.table_bytes``, what ``dsagent batch compare`` writes).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pandas as pd
import panel as pn
import param

from dsagent.artifacts.schema import TERMINAL_STATUSES
from dsagent.panel_app import formats, untrusted
from dsagent.panel_app.components import card, empty_state, loading_placeholder, status_chip
from dsagent.panel_app.widgets import Table, html_pane, run_link

if TYPE_CHECKING:
    from dsagent.artifacts.models import Run
    from dsagent.panel_app.context import AppContext

__all__ = ["BatchView", "grid_values", "grid_html", "progress_color", "children_frame"]

CHILD_PAGE = 50
MAX_THUMBNAIL_CHILDREN = 200  # plots are read per child: past this many, the table says so instead of reading them all
VALUES_SHOWN = 40  # a parameter's values listed in the grid; the rest are counted
_ORDER = ("succeeded", "failed", "unverified", "cancelled", "running", "queued")
#: the pager under a paginated table in the theme's colours (widgets.TABLE_CSS leaves Tabulator's footer white)
_FOOTER_CSS = """
.tabulator .tabulator-footer, .tabulator .tabulator-footer .tabulator-page {background-color: var(--ds-surface, #fff) !important;
  color: var(--ds-text, #222) !important; border-color: var(--ds-border, #ddd) !important}
.tabulator .tabulator-footer .tabulator-page.active {color: var(--ds-primary, #1565c0) !important}
"""
_CHILD_COLUMNS = ["run", "status", "parameters", "duration", "error"]
_CSS = """
.ds-grid {border-collapse: collapse; width: 100%}
.ds-grid th {text-align: left; vertical-align: top; font-weight: 500; padding: 4px 16px 4px 0; white-space: nowrap; width: 1%}
.ds-grid td {padding: 4px 0; vertical-align: top}
.ds-values {display: flex; flex-wrap: wrap; gap: 4px 6px}
.ds-value {font-family: ui-monospace, monospace; font-size: 0.85rem; padding: 1px 8px; border-radius: 10px; overflow-wrap: anywhere;
  background: var(--ds-code-bg, #eef0f3)}
.ds-batch-progress {font-weight: 500}
.ds-counts {display: flex; flex-wrap: wrap; align-items: center; gap: 6px 12px; margin: 4px 0}
"""


def _key(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def grid_values(children: list["Run"], names: list[str] | None = None) -> dict[str, list[Any]]:
    """Each swept parameter's values, in the order the children have them (each value once). ``names``: the batch's
    ``parameters`` (its grid's keys); without them, every parameter a child has."""
    if not names:
        names = []
        for child in children:
            names.extend(k for k in child.params if k not in names)
    grid: dict[str, list[Any]] = {name: [] for name in names}
    seen: dict[str, set[str]] = {name: set() for name in names}
    for child in children:
        for name in names:
            if name in child.params and _key(child.params[name]) not in seen[name]:
                seen[name].add(_key(child.params[name]))
                grid[name].append(child.params[name])
    return grid


def _shown(value: Any) -> str:
    return untrusted.text(value if isinstance(value, str) else json.dumps(value, default=str))


def grid_html(grid: dict[str, list[Any]], children: int) -> str:
    """The grid as a table, a parameter a row with its values; what it makes ("6 children, every combination")."""
    if not grid:
        return empty_state("No parameters were swept", "Every child ran the notebook with its own values.", icon_name="page")
    rows = []
    for name, values in grid.items():
        chips = "".join(f"<span class='ds-value'>{_shown(v)}</span>" for v in values[:VALUES_SHOWN])
        more = f" <span class='ds-muted'>and {len(values) - VALUES_SHOWN:,} more</span>" if len(values) > VALUES_SHOWN else ""
        note = " <span class='ds-muted'>(the same in every child)</span>" if len(values) == 1 and children > 1 else ""
        rows.append(f"<tr><th scope='row'>{untrusted.text(name)}</th><td><div class='ds-values'>{chips}{more}{note}</div></td></tr>")
    combinations = 1
    for values in grid.values():
        combinations *= max(len(values), 1)
    what = "every combination of these values" if combinations == children else "one set of values each"
    return (f"<table class='ds-grid'>{''.join(rows)}</table>"
            f"<p class='ds-muted'>{children:,} {'child' if children == 1 else 'children'}: {what}.</p>")


def _varying(grid: dict[str, list[Any]] | None) -> list[str] | None:
    """The parameters whose value differs between children (what tells one child from another)."""
    if not grid:
        return None
    names = [name for name, values in grid.items() if len(values) > 1]
    return names or list(grid)


def children_frame(children: list["Run"], shown: list[str] | None = None) -> pd.DataFrame:
    """One page of children as table rows: link, status chip, the parameters that vary (text), duration, error's first line."""
    def params(child: "Run") -> str:
        names = shown if shown is not None else list(child.params)
        return ", ".join(f"{k}={v if isinstance(v, str) else json.dumps(v, default=str)}" for k, v in child.params.items() if k in names)

    return pd.DataFrame([{"run": run_link(c.id), "status": status_chip(c.status), "parameters": params(c)[:300],
                          "duration": formats.run_duration(c), "error": (c.error or "").strip().split("\n", 1)[0][:200]}
                         for c in children], columns=_CHILD_COLUMNS)


def _progress_html(counts: dict[str, int]) -> str:
    total = sum(counts.values())
    done = sum(counts.get(s, 0) for s in TERMINAL_STATUSES)
    parts = "".join(f"<span>{status_chip(s)} {counts[s]:,}</span>" for s in _ORDER if counts.get(s))
    return f"<div class='ds-counts'><span class='ds-batch-progress'>{done:,} of {total:,} children finished</span>{parts}</div>"


def progress_color(counts: dict[str, int]) -> str:
    """Green while no child failed, amber once some did, red when every finished child failed."""
    failed = sum(counts.get(s, 0) for s in ("failed", "cancelled", "unverified"))
    if not failed:
        return "success"
    return "danger" if not counts.get("succeeded") else "warning"


def _comparison_frame(frame: pd.DataFrame, plots: dict[int, list[str]]) -> pd.DataFrame:
    """The comparison as shown: escaped titles (record and parameter names come from the runs' code), then our
    own HTML columns "run", "status" and "plots"; a record that has one of those names keeps its values under another title."""
    ids = list(frame["run_id"])
    shown = untrusted.table(frame.drop(columns=["run_id"]))
    shown = shown.rename(columns={c: f"{c} (record)" for c in ("run", "plots") if c in shown.columns})
    shown.insert(0, "run", [run_link(r) for r in ids])
    shown["status"] = [status_chip(s) for s in shown["status"]]
    shown["seconds"] = [formats.duration(s) if pd.notna(s) else "" for s in shown["seconds"]]
    if "duration" not in shown.columns:
        shown = shown.rename(columns={"seconds": "duration"})
    shown["plots"] = ["".join(plots.get(int(r), [])) for r in ids]
    return shown


class BatchView(pn.viewable.Viewer):
    """Built once per run page; ``update(run)`` on every poll. Its cards show once the run is known to be a batch.
    ``on_older``/``on_newer`` page through the children."""

    counts = param.Dict(default={}, doc="how many children are in each status")
    offset = param.Integer(default=0, bounds=(0, None), doc="the first child of the page shown")
    total = param.Integer(default=0, doc="how many children the batch has")
    grid = param.Dict(default=None, allow_None=True, doc="{parameter: its values}, read from the children once they exist")

    def __init__(self, ctx: "AppContext", run_id: int, is_batch: bool = False, **params: Any) -> None:
        """``is_batch``: the preload read the run and it is a batch, so its cards show from the start (a card shown
        later would hold a Tabulator made while it was hidden, which can render without rows)."""
        super().__init__(**params)
        self.ctx, self.run_id = ctx, run_id
        self.compared = False
        self.table = None  # the BatchTable, for the downloads
        self.grid_pane = html_pane(loading_placeholder(2), stylesheets=[_CSS])
        self.progress = html_pane("", stylesheets=[_CSS])
        self.bar = pn.indicators.Progress(value=0, max=1, bar_color="success", sizing_mode="stretch_width", max_width=480, margin=(2, 0, 8, 0))
        self.newer = pn.widgets.Button(name="◀ Previous", button_style="outline", disabled=True, width=110)
        self.older = pn.widgets.Button(name="Next ▶", button_style="outline", disabled=True, width=110)
        self.position = html_pane("", margin=(8, 10))
        self.pager = pn.FlexBox(self.newer, self.older, self.position, flex_wrap="wrap", align_items="center", sizing_mode="stretch_width")
        self.children_table: Table | None = None  # made with its first page of children, in a card already shown
        self._said_none = False  # the children slot says "No children yet"
        self.children_slot = pn.Column(html_pane(loading_placeholder(3, "loading the children")), sizing_mode="stretch_width", margin=0)
        self.comparison_slot = pn.Column(html_pane(empty_state("The comparison shows once every child has finished",
                                                               "Parameters, recorded values, status and plots of each child, "
                                                               "side by side, with CSV and Parquet downloads.", icon_name="runs")),
                                         sizing_mode="stretch_width", margin=0)
        self.grid_card = card(self.grid_pane, title="Grid", visible=is_batch)
        self.children_card = card(self.progress, self.bar, self.pager, self.children_slot, title="Children", visible=is_batch)
        self.comparison_card = card(self.comparison_slot, title="Comparison", visible=is_batch)
        self.newer.on_click(self.on_newer)
        self.older.on_click(self.on_older)

    def __panel__(self) -> Any:
        return pn.Column(self.grid_card, self.children_card, self.comparison_card, sizing_mode="stretch_width", margin=0)

    async def update(self, run: "Run") -> bool:
        """Read the children's progress (every poll), the grid (once) and, once the batch has ended, the comparison
        (once). True when nothing more is to be read."""
        if run.kind != "batch":
            return True
        if not self.children_card.visible:  # the preload did not say (the store was busy): shown now, before any table is made
            self.grid_card.visible = self.children_card.visible = self.comparison_card.visible = True
        counts = await self.ctx.read(self.ctx.store.child_status_counts, self.run_id)
        if self.grid is None and sum(counts.values()):  # the children are made at the start: their values are the grid
            self.grid = await self.ctx.read(self._read_grid, run)
        elif self.grid is None and run.done:
            self.grid_pane.object = empty_state("No grid", "The batch ended before it made its children.", icon_name="page")
        self.counts = counts
        await self._children_page()
        if run.done and not self.compared:
            await self._comparison()
        return run.done and self.compared

    def _read_grid(self, run: "Run") -> dict[str, list[Any]]:
        from dsagent.runs.batch_compare import batch_children

        names = run.params.get("parameters") if isinstance(run.params.get("parameters"), list) else None
        return grid_values(batch_children(self.ctx.store, self.run_id), names)

    @param.depends("counts", watch=True)
    def _draw_progress(self) -> None:
        total = sum(self.counts.values())
        self.progress.object = _progress_html(self.counts)
        self.bar.max = max(total, 1)
        self.bar.value = sum(self.counts.get(s, 0) for s in TERMINAL_STATUSES)
        self.bar.bar_color = progress_color(self.counts)

    @param.depends("grid", "total", watch=True)
    def _draw_grid(self) -> None:
        if self.grid is not None:
            self.grid_pane.object = grid_html(self.grid, self.total)

    async def _children_page(self) -> None:
        page = await self.ctx.read(self.ctx.store.search_runs, parent_id=self.run_id, sort="id", descending=False,
                                   offset=self.offset, limit=CHILD_PAGE)
        self._show_children(children_frame(page.items, _varying(self.grid)))
        self.total = page.total
        last = min(page.offset + CHILD_PAGE, page.total)
        self.position.object = f"children {page.offset + 1:,}–{last:,} of {page.total:,}" if page.total else ""
        self.newer.disabled = page.offset == 0
        self.older.disabled = last >= page.total
        self.pager.visible = page.total > CHILD_PAGE

    def _show_children(self, frame: pd.DataFrame) -> None:
        """The page of children: the table made with its first rows (then only its value changes), or the empty state."""
        if frame.empty:
            if self.children_table is not None or not self._said_none:
                self.children_table, self._said_none = None, True
                self.children_slot.objects = [html_pane(empty_state("No children yet",
                                                                    "The batch makes one child per set of values as it starts."))]
            return
        if self.children_table is None:
            self.children_table = Table(
                frame, show_index=False, disabled=True, sizing_mode="stretch_width", layout="fit_columns",
                widths={"run": 70, "status": 130, "duration": 100}, formatters={c: {"type": "html"} for c in ("run", "status")},
                name="children", configuration={"columnDefaults": {"headerSort": False},
                                                "columns": [{"field": "parameters", "minWidth": 170}, {"field": "error", "minWidth": 200}]})
            self.children_slot.objects = [self.children_table]
        elif not frame.equals(self.children_table.value):
            self.children_table.value = frame  # as tall as its rows (a page is at most CHILD_PAGE)

    async def on_older(self, _: Any = None) -> None:
        self.offset += CHILD_PAGE
        await self._children_page()

    async def on_newer(self, _: Any = None) -> None:
        self.offset = max(0, self.offset - CHILD_PAGE)
        await self._children_page()

    async def _comparison(self) -> None:
        from dsagent.runs.batch_compare import batch_table

        table = await self.ctx.read(batch_table, self.ctx.store, self.run_id)
        plots = await self.ctx.read(self._plots, [row["run_id"] for row in table.rows[:MAX_THUMBNAIL_CHILDREN]])
        frame = _comparison_frame(table.to_frame(), plots)
        self.table, self.compared = table, True
        if frame.empty:
            self.comparison_slot.objects = [html_pane(empty_state("Nothing to compare", "The batch ended without children."))]
            return
        self.comparison_slot.objects = [self._downloads(), self._comparison_table(frame, any(plots.values()))]

    def _comparison_table(self, frame: pd.DataFrame, with_plots: bool) -> Table:
        html = {"run": {"type": "html"}, "status": {"type": "html"}, "plots": {"type": "html"}}
        if not with_plots:
            frame = frame.drop(columns=["plots"])
        paged = {"pagination": "local", "page_size": 25} if len(frame) > 25 else {}
        return Table(frame, show_index=False, disabled=True, sizing_mode="stretch_width", layout="fit_data_fill", name="comparison",
                     formatters=html, widths={"plots": 220} if with_plots else {}, stylesheets=[_FOOTER_CSS],
                     configuration={"rowHeight": 70 if with_plots else Table.ROW_HEIGHT}, **paged)

    def _downloads(self) -> pn.FlexBox:
        """CSV and Parquet of the comparison (Material UI buttons: they join the page after it has shown)."""
        import panel_material_ui as pmui

        csv = pmui.FileDownload(label="Comparison as CSV", variant="outlined", callback=lambda: self._file("csv"),
                                filename=f"batch-{self.run_id}-comparison.csv")
        parquet = pmui.FileDownload(label="Comparison as Parquet", variant="outlined", callback=lambda: self._file("parquet"),
                                    filename=f"batch-{self.run_id}-comparison.parquet")
        return pn.FlexBox(csv, parquet, flex_wrap="wrap", gap="8px", sizing_mode="stretch_width")

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

        if self.table is None:
            return io.BytesIO(b"")
        return io.BytesIO(table_bytes(self.table, fmt)[2])
