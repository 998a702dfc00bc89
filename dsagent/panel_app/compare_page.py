"""Compare runs (``/compare?ids=3,5,8``): parameters, status, duration, recorded scalars and plots side by side.

The table is ``batch_compare.compare_runs``'s (the one ``dsagent batch compare`` prints for a sweep), turned so
each run is a column. A parameter a run did not pass shows the notebook's default, marked as such: the default
is read from the notebook the run came from (a notebook run's title is its file name, a sweep child's notebook
is its batch's), as the notebook folders have it now. Rows whose values differ between the runs (defaults
counted as the values they are) are highlighted. Under the table, each run's plots as thumbnails.

An address with fewer than two run ids, or ids that are not numbers or name no run, is a not-found page with a
way back, as ``/run?id=9999`` is.
"""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import panel as pn
import param

from dsagent.errors import NotFound
from dsagent.panel_app import formats, untrusted
from dsagent.panel_app.components import card, loading_placeholder, not_found_page, status_chip
from dsagent.panel_app.layout import page_frame
from dsagent.panel_app.widgets import Notice, current_user, html_pane, image_tile, preloaded, query_arg, run_link

if TYPE_CHECKING:
    from dsagent.artifacts.models import Artifact, Run
    from dsagent.panel_app.context import AppContext
    from dsagent.runs.batch_compare import BatchTable

__all__ = ["CompareView", "CompareData", "Default", "page", "preload", "parse_ids", "comparison_html", "notebook_defaults", "MAX_RUNS"]

MAX_RUNS = 12  # columns that still fit side by side
PLOTS_PER_RUN = 12

_CSS = """
.ds-compare {border-collapse: collapse; min-width: 100%}
.ds-compare th, .ds-compare td {padding: 5px 12px; border-bottom: 1px solid var(--ds-border); text-align: left; vertical-align: top;
  overflow-wrap: anywhere; min-width: 80px}
.ds-compare thead th {font-weight: 500; border-bottom: 2px solid var(--ds-border)}
.ds-compare tbody th {font-weight: 500; min-width: 70px}
.ds-compare tr.ds-section th {padding-top: 14px; font-size: 0.8rem; letter-spacing: 0.04em; text-transform: uppercase;
  color: var(--ds-muted); border-bottom: 0}
.ds-compare tr.ds-differs td, .ds-compare tr.ds-differs th[scope=row] {background: color-mix(in srgb, var(--ds-unverified) 14%, transparent)}
.ds-differs-mark {display: inline-block; margin-left: 6px; padding: 0 6px; border-radius: 8px; font-size: 0.72rem; font-weight: 500;
  color: var(--ds-unverified); border: 1px solid color-mix(in srgb, var(--ds-unverified) 55%, transparent)}
.ds-default {color: var(--ds-muted); font-style: italic}
.ds-default small {font-style: normal; margin-left: 4px; padding: 0 5px; border-radius: 8px; border: 1px solid var(--ds-border)}
.ds-plots {display: flex; flex-wrap: wrap; gap: 12px; align-items: flex-start}
.ds-plots > div {flex: 1 1 220px; min-width: 0; border-left: 2px solid var(--ds-border); padding-left: 10px}
"""
_UNKNOWN = object()  # a default the page could not read (the notebook is gone, or its default is an expression)


@dataclass(frozen=True)
class Default:
    """A notebook parameter's default: its source text (``"north"``, ``5``, ``pd.Timestamp.now()``) and, when that is
    a Python literal, its value (what "differs" compares)."""

    source: str
    value: Any = _UNKNOWN

    @classmethod
    def of(cls, source: str) -> "Default":
        try:
            return cls(source, ast.literal_eval(source))
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            return cls(source)


@dataclass
class CompareData:
    """What the page shows (a blocking read: ``load``); ``missing`` names the ids that are no run."""

    ids: list[int]
    missing: list[int] = field(default_factory=list)
    table: "BatchTable | None" = None
    runs: list["Run"] = field(default_factory=list)
    defaults: dict[int, dict[str, Default]] = field(default_factory=dict)
    plots: dict[int, tuple[list["Artifact"], bool]] = field(default_factory=dict)  # run id -> (images, more than shown)


def parse_ids(raw: str) -> list[int]:
    """``"3, 5,3"`` -> ``[3, 5]``; ValueError if a part is not a number."""
    ids: list[int] = []
    for part in raw.split(","):
        if part.strip():
            value = int(part.strip())
            if value not in ids:
                ids.append(value)
    return ids


# -- reading (blocking: in a worker thread) ---------------------------------------------------------------------

def _notebook_of(store: Any, run: "Run") -> str | None:
    """Where the run's notebook is: a notebook run's title is its file name; a sweep child's is its batch's notebook."""
    if run.kind == "notebook":
        return run.title
    if run.kind == "batch-child" and run.parent_id is not None:
        try:
            notebook = store.get_run(run.parent_id).params.get("notebook")
        except NotFound:
            return None
        return notebook if isinstance(notebook, str) else None
    return None


def notebook_defaults(ctx: "AppContext", store: Any, runs: list["Run"]) -> dict[int, dict[str, Default]]:
    """Each run's notebook's parameters with their defaults, as the notebook folders have the notebook now (runs whose
    notebook is not there get none: the page says "not passed")."""
    from dsagent.runs.notebook_input import notebook_parameters
    from dsagent.runs.notebook_library import find_notebook

    by_path: dict[str, dict[str, Default]] = {}
    found: dict[int, dict[str, Default]] = {}
    for run in runs:
        where = _notebook_of(store, run)
        if not where:
            continue
        if where not in by_path:
            by_path[where] = {}
            for candidate in dict.fromkeys([where, Path(where).name]):  # the recorded path, else the same name in a folder
                try:
                    entry = find_notebook(candidate, ctx.settings)
                    by_path[where] = {p["name"]: Default.of(p["default"]) for p in notebook_parameters(entry.path)}
                    break
                except Exception:  # not in the folders, or not a readable notebook: no defaults to show
                    continue
        found[run.id] = by_path[where]
    return found


def load(ctx: "AppContext", ids: list[int]) -> CompareData:
    """Everything the page shows for ``ids`` (the first MAX_RUNS of them)."""
    from dsagent.runs.batch_compare import compare_runs

    store = ctx.store
    runs, missing = [], []
    for run_id in ids[:MAX_RUNS]:
        try:
            runs.append(store.get_run(run_id))
        except NotFound:
            missing.append(run_id)
    if missing:
        return CompareData(ids, missing)
    plots = {}
    for run in runs:
        found = store.search_artifacts(run_id=run.id, kind="image", limit=PLOTS_PER_RUN)
        plots[run.id] = (sorted(found.items, key=lambda a: a.id), found.next_cursor is not None)
    return CompareData(ids, [], compare_runs(store, [r.id for r in runs]), runs, notebook_defaults(ctx, store, runs), plots)


def preload(ctx: "AppContext", args: dict[str, str]) -> CompareData | None:
    try:
        ids = parse_ids(args.get("ids", ""))
    except ValueError:
        return None  # the page says what is wrong with the address
    return load(ctx, ids) if len(ids) >= 2 else None


# -- the table (plain functions of the data) ---------------------------------------------------------------------

def _plain(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, default=str)[:200]
    return str(value)[:200]


def _parameter_cell(run: "Run", name: str, defaults: dict[str, Default]) -> tuple[str, Any]:
    """(HTML, the value it stands for) of a parameter's cell: the value passed, else the notebook's default."""
    if name in run.params:
        value = run.params[name]
        return untrusted.text(_plain(value)), value
    default = defaults.get(name)
    if default is None:
        return ("<span class='ds-default' title=\"the run used the notebook's default; the notebook is not in the notebook "
                "folders to say which\">not passed</span>"), _UNKNOWN
    shown = _plain(default.value) if default.value is not _UNKNOWN else default.source
    return (f"<span class='ds-default' title=\"not passed: the notebook's default\">{untrusted.text(shown)}<small>default</small></span>",
            default.value)


def _same(values: list[Any]) -> bool:
    if any(v is _UNKNOWN for v in values):
        return all(v is _UNKNOWN for v in values)
    return len({json.dumps(v, sort_keys=True, default=str) for v in values}) <= 1


def _row(label: str, cells: list[str], values: list[Any], *, mark_differences: bool = True) -> str:
    differs = mark_differences and not _same(values)
    mark = "<span class='ds-differs-mark'>differs</span>" if differs else ""
    return (f"<tr class='{'ds-differs' if differs else ''}'><th scope='row'>{untrusted.text(label)}{mark}</th>"
            + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")


def comparison_html(table: "BatchTable", runs: list["Run"], defaults: dict[int, dict[str, Default]]) -> str:
    """One column per run; parameters (defaults filled in), outcome, recorded scalars; differing rows highlighted."""
    by_id = {r.id: r for r in runs}
    rows = [r for r in table.rows if r["run_id"] in by_id]
    ordered = [by_id[r["run_id"]] for r in rows]
    head = "".join(f"<th>run {run_link(r.id)}<br><small class='ds-muted'>{untrusted.text(r.title or '')}</small></th>" for r in ordered)
    section = lambda title: f"<tr class='ds-section'><th colspan='{len(rows) + 1}'>{title}</th></tr>"  # noqa: E731
    lines = [section("Parameters")] if table.parameters else []
    for name in table.parameters:
        cells = [_parameter_cell(run, name, defaults.get(run.id, {})) for run in ordered]
        lines.append(_row(name, [c for c, _ in cells], [v for _, v in cells]))
    lines.append(section("Outcome"))
    lines.append(_row("status", [status_chip(r["status"]) for r in rows], [r["status"] for r in rows]))
    # (durations nearly always differ a little: not highlighted)
    lines.append(_row("duration", [formats.duration(r["seconds"]) for r in rows], [], mark_differences=False))
    if any(r.get("error") for r in rows):
        lines.append(_row("error", [untrusted.text((r.get("error") or "")[:300]) for r in rows], [r.get("error") for r in rows]))
    if table.scalars:
        lines.append(section("Recorded"))
    for name in table.scalars:
        values = [r.get(name) for r in rows]
        cells = ["<span class='ds-muted'>—</span>" if v is None else untrusted.text(_plain(v)) for v in values]
        lines.append(_row(name, cells, values))
    return (f"<div class='ds-scroll'><table class='ds-compare'><thead><tr><th></th>{head}</tr></thead>"
            f"<tbody>{''.join(lines)}</tbody></table></div>")


def plots_html(runs: list["Run"], plots: dict[int, tuple[list["Artifact"], bool]]) -> str:
    columns = []
    for run in runs:
        images, more = plots.get(run.id, ([], False))
        tiles = "".join(image_tile(a, a.name[:40]) for a in images) or "<p class='ds-muted'>no plots</p>"
        link = f"<br><a href='./run?id={run.id}'>more on the run's page</a>" if more else ""
        columns.append(f"<div><b>run {run_link(run.id)}</b><br>{tiles}{link}</div>")
    return f"<div class='ds-plots'>{''.join(columns)}</div>"


# -- the page ----------------------------------------------------------------------------------------------------

class CompareView(pn.viewable.Viewer):
    """The comparison of ``ids``; ``data`` is what ``load`` read (preloaded, or read once the page is there)."""

    data = param.ClassSelector(class_=CompareData, default=None, allow_None=True, doc="the runs, their table, defaults and plots")

    def __init__(self, ctx: "AppContext", ids: list[int], first: CompareData | None = None, **params: Any) -> None:
        super().__init__(**params)
        self.ctx, self.ids = ctx, ids
        self.notice = Notice()
        if len(ids) > MAX_RUNS:
            self.notice.show(f"Showing the first {MAX_RUNS} of {len(ids)} runs.")
        self.mixed = html_pane("", visible=False)
        self.table = html_pane(loading_placeholder(6, "loading the comparison"), stylesheets=[_CSS])
        self.plots = html_pane(loading_placeholder(2, "loading the plots"), stylesheets=[_CSS])
        if first is not None:
            self.data = first
        else:
            pn.state.onload(self.refresh)  # the preload found the store busy: read once the page is there

    def __panel__(self) -> Any:
        return page_frame("/runs", f"Compare runs {', '.join(map(str, self.ids[:MAX_RUNS]))}", self.notice.pane, self.mixed,
                          card(self.table, title="Side by side"), card(self.plots, title="Plots"), user=current_user())

    async def refresh(self) -> None:
        async def work() -> None:
            self.data = await self.ctx.read(load, self.ctx, self.ids)
        await self.notice.guard(work)

    @param.depends("data", watch=True)
    def _draw(self) -> None:
        data = self.data
        if data.missing:  # gone between the address and the read (a gc): say so where the table would be
            self.notice.show(f"There is no run {', '.join(map(str, data.missing))} in this workspace.", "danger")
            return
        names = sorted({r.title or "" for r in data.runs})
        if len(names) > 1:
            self.mixed.object = (f"<b>These runs come from different notebooks</b> ({untrusted.text(', '.join(names))}): "
                                 "their parameters may not line up.")
            self.mixed.visible = True
        self.table.object = comparison_html(data.table, data.runs, data.defaults)
        self.plots.object = plots_html(data.runs, data.plots)


def page(ctx: "AppContext") -> Any:
    raw = query_arg("ids") or ""
    first = preloaded()
    try:
        ids = parse_ids(raw)
    except ValueError:
        ids = []
    if len(ids) < 2:
        return not_found_page("/runs", "Compare runs", f"Compare needs two or more run ids in the address, like ?ids=3,5 "
                              f"(this one has “{untrusted.text(raw[:100])}”)", "./runs", "All runs", user=current_user())
    if isinstance(first, CompareData) and first.missing:
        missing = ", ".join(map(str, first.missing))
        what = f"is no run {missing}" if len(first.missing) == 1 else f"are no runs {missing}"
        return not_found_page("/runs", "Compare runs", f"There {what} in this workspace", "./runs", "All runs", user=current_user())
    return CompareView(ctx, ids, first if isinstance(first, CompareData) else None)
