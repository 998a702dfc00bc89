"""Compare runs (``/compare?ids=3,5,8``): parameters, status, duration, recorded scalars and plots side by side.

The table is ``batch_compare.compare_runs``'s (the one ``dsagent batch compare``
prints for a sweep), turned so each run is a column; rows whose values differ
between the runs are marked. Under it, each run's plots as thumbnails.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import panel as pn

from dsagent.panel_app import untrusted
from dsagent.panel_app.widgets import CSS, Notice, current_user, html_pane, image_tile, page_frame, query_arg, run_link, status_badge

if TYPE_CHECKING:
    from dsagent.panel_app.context import AppContext
    from dsagent.runs.batch_compare import BatchTable

__all__ = ["page", "MAX_RUNS"]

MAX_RUNS = 12  # columns that still fit side by side
PLOTS_PER_RUN = 12

_STYLE = """
.ds-compare td, .ds-compare th {padding: 3px 12px; border-bottom: 1px solid #eee; text-align: left; vertical-align: top}
.ds-compare tr.ds-differs td {background: #fff7e0}
.ds-plots {display: flex; gap: 12px; align-items: flex-start}
.ds-plots > div {flex: 1; min-width: 210px; border-left: 1px solid #eee; padding-left: 8px}
"""


def _value(column: str, value: Any) -> str:
    if column == "run_id":
        return run_link(value)
    if column == "status":
        return status_badge(str(value))
    if value is None:
        return "<span style='color:#999'>—</span>"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (dict, list)):
        return untrusted.text(json.dumps(value, default=str)[:200])
    return untrusted.text(str(value)[:200])


def comparison_html(table: "BatchTable", titles: dict[int, str]) -> str:
    """One column per run, one row per parameter / status / seconds / scalar / error; differing rows marked."""
    rows = table.rows
    head = "".join(f"<th>run {run_link(r['run_id'])}<br><small>{untrusted.text(titles.get(r['run_id'], ''))}</small></th>" for r in rows)
    lines = []
    for column in table.columns:
        if column == "run_id":
            continue
        values = [r.get(column) for r in rows]
        if column == "error" and not any(values):
            continue
        differs = len({json.dumps(v, sort_keys=True, default=str) for v in values}) > 1
        kind = "parameter" if column in table.parameters else ("recorded" if column in table.scalars else "")
        label = f"<b>{untrusted.text(column)}</b>" + (f" <small style='color:#888'>{kind}</small>" if kind else "")
        cells = "".join(f"<td>{_value(column, v)}</td>" for v in values)
        lines.append(f"<tr class='{'ds-differs' if differs else ''}'><td>{label}</td>{cells}</tr>")
    return f"<table class='ds-compare'><tr><th></th>{head}</tr>{''.join(lines)}</table>"


def _ids(raw: str) -> list[int]:
    ids: list[int] = []
    for part in raw.split(","):
        part = part.strip()
        if part:
            value = int(part)  # ValueError: the page says the address is wrong
            if value not in ids:
                ids.append(value)
    return ids


def page(ctx: "AppContext") -> pn.Column:
    from dsagent.runs.batch_compare import compare_runs

    notice = Notice()
    raw = query_arg("ids") or ""
    try:
        ids = _ids(raw)
    except ValueError:
        ids = []
    if len(ids) < 2:
        notice.show(f"Compare needs two or more run ids in the address (<code>?ids=3,5</code>), got {untrusted.text(raw)!s}. "
                    "Tick runs on a notebook's page (<a href='./notebooks'>Notebooks</a>) and press Compare.", "danger")
        return page_frame("/notebooks", "Compare runs", notice.pane, user=current_user())
    if len(ids) > MAX_RUNS:
        notice.show(f"Showing the first {MAX_RUNS} of {len(ids)} runs.")
        ids = ids[:MAX_RUNS]
    table_pane = pn.pane.HTML("loading…", stylesheets=[CSS, _STYLE], sizing_mode="stretch_width")
    same = html_pane("")
    plots = pn.pane.HTML("", stylesheets=[CSS, _STYLE], sizing_mode="stretch_width")

    async def load() -> None:
        async def work() -> None:
            table = await ctx.read(compare_runs, ctx.store, ids)
            runs = [await ctx.read(ctx.store.get_run, i) for i in ids]
            titles = {r.id: r.title or "" for r in runs}
            names = sorted({r.title or "" for r in runs})
            same.object = ("" if len(names) == 1 else
                           f"<b>These runs come from different notebooks</b> ({untrusted.text(', '.join(names))}): parameters may not line up.")
            table_pane.object = comparison_html(table, titles)
            columns = []
            for run in runs:
                found = await ctx.read(ctx.store.search_artifacts, run_id=run.id, kind="image", limit=PLOTS_PER_RUN)
                tiles = "".join(image_tile(a, a.name[:40]) for a in sorted(found.items, key=lambda a: a.id)) or "<i>no plots</i>"
                more = f"<br><a href='./run?id={run.id}'>more on the run's page</a>" if found.next_cursor else ""
                columns.append(f"<div><b>run {run_link(run.id)}</b><br>{tiles}{more}</div>")
            plots.object = f"<div class='ds-plots'>{''.join(columns)}</div>"
        await notice.guard(work)

    pn.state.onload(load)
    return page_frame("/notebooks", f"Compare runs {', '.join(map(str, ids))}", notice.pane, same, table_pane,
                      pn.pane.Markdown("### Plots"), plots, user=current_user())
