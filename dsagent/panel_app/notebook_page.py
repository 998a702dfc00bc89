"""One notebook's page (``/notebook?path=...``): its parameters as a form, Run, a sweep over a grid, its recent runs.

**Run** checks the values (each against its parameter's type, then papermill's
own check in ``prepare_notebook``) and starts ``dsagent run`` as a child
process (``actions.launch_notebook_run``); the browser then goes to the run's
page, which follows it live. **Sweep**: comma-separated values per parameter
make a grid (the count shows as it is typed; above ``batch_confirm_above`` a
confirmation box must be ticked) started as ``dsagent batch``
(``actions.launch_sweep``); the browser goes to the batch run's page.
**Compare**: tick two or more of the notebook's recent runs.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pandas as pd
import panel as pn

from dsagent.panel_app import untrusted
from dsagent.errors import DsagentError, NotFound
from dsagent.panel_app.actions import launch_notebook_run, launch_sweep
from dsagent.panel_app.parameter_form import ParameterForm
from dsagent.panel_app.widgets import Notice, current_user, duration_text, html_pane, page_frame, query_arg, run_link, status_badge, time_text

if TYPE_CHECKING:
    from pathlib import Path

    from dsagent.panel_app.context import AppContext
    from dsagent.runs.notebook_library import NotebookEntry

__all__ = ["page", "go_to"]

RUNS_PAGE = 20
RUN_COLUMNS = ["run", "status", "started", "duration", "parameters"]


def go_to(route: str, search: str) -> None:
    """Send this browser to another dashboard page (``route`` next to the current one, e.g. ``run``)."""
    location = pn.state.location
    base = (location.pathname or "/").rsplit("/", 1)[0]
    location.reload = False
    location.param.update(pathname=f"{base}/{route}", search=search)  # pushed into the history first,
    location.reload = True  # then the browser loads it


def _describe(entry: "NotebookEntry") -> tuple[list[dict[str, Any]], bool]:
    """The notebook's parameters (papermill's inference) and whether it has a cell tagged ``parameters``."""
    from dsagent.runs.notebook_input import notebook_parameters, peek_notebook

    data = peek_notebook(entry.path)
    tagged = any("parameters" in ((c.get("metadata") or {}).get("tags") or []) for c in data.get("cells") or [])
    return notebook_parameters(entry.path), tagged


def _check(path: "Path", values: dict[str, Any]) -> None:
    """Papermill's own check of the values, as ``dsagent run`` will do it (``NotebookError`` names the parameter)."""
    from dsagent.runs.notebook_cells import notebook_kernel_name
    from dsagent.runs.notebook_input import peek_notebook, prepare_notebook

    prepare_notebook(path, notebook_kernel_name(peek_notebook(path), None, path=str(path)), values)


def _runs_frame(runs) -> pd.DataFrame:
    return pd.DataFrame(
        [{"run": run_link(r.id), "status": status_badge(r.status), "started": time_text(r.started or r.created), "duration": duration_text(r),
          "parameters": untrusted.text(json.dumps(r.params, default=str)[:200])} for r in runs],
        columns=RUN_COLUMNS,
    )


def _error_html(exc: DsagentError) -> str:
    hint = f" {untrusted.text(exc.hint)}" if exc.hint else ""
    return f"<span style='color:#dc3545'><b>{untrusted.text(exc.message)}</b></span>{hint}"


def _backends() -> list[str]:
    from dsagent.kernel_gateway.registry import backend_registry

    return backend_registry.names()


def page(ctx: "AppContext") -> pn.Column:
    from dsagent.runs.notebook_library import find_notebook

    notice = Notice()
    raw = query_arg("path") or query_arg("name") or ""
    try:
        entry = find_notebook(raw, ctx.settings)
        parameters, tagged = _describe(entry)
    except (NotFound, DsagentError) as exc:
        notice.show(f"{untrusted.text(exc.message)}. {untrusted.text(exc.hint)} — <a href='./notebooks'>all notebooks</a>", "danger")
        return page_frame("/notebooks", "Notebook", notice.pane, user=current_user())

    user = current_user() or "anonymous"
    form = ParameterForm(parameters)
    about = html_pane(
        f"<code>{untrusted.text(str(entry.path))}</code> · {len(parameters)} parameter{'s' if len(parameters) != 1 else ''}"
        + ("" if tagged else "<br><b>This notebook has no cell tagged <code>parameters</code>: it runs with its own values.</b> "
           "Tag a cell <code>parameters</code> in Jupyter to set them here.")
    )
    names = _backends()
    backend = pn.widgets.Select(name="backend", options=names, value=ctx.settings.backend if ctx.settings.backend in names else names[0],
                                width=160)
    run_button = pn.widgets.Button(name="Run", button_type="primary", width=120)
    run_message = html_pane("")

    sweep_count = html_pane("")
    limit = ctx.settings.batch_confirm_above
    confirm = pn.widgets.Checkbox(name="yes, start them all", visible=False)
    sweep_button = pn.widgets.Button(name="Launch sweep", button_type="primary", width=140, disabled=True)
    sweep_message = html_pane("")

    runs_table = pn.widgets.Tabulator(_runs_frame([]), show_index=False, disabled=True, selectable="checkbox", height=300,
                                      sizing_mode="stretch_width", layout="fit_data_fill", name="notebook-runs",
                                      formatters={c: {"type": "html"} for c in ("run", "status", "parameters")},
                                      configuration={"columnDefaults": {"headerSort": False}})
    prev_button = pn.widgets.Button(name="◀ newer", width=90, disabled=True)
    next_button = pn.widgets.Button(name="older ▶", width=90, disabled=True)
    position = pn.pane.HTML("", width=220)
    compare_button = pn.widgets.Button(name="Compare selected", width=160)
    compare_message = html_pane("")
    state: dict[str, Any] = {"offset": 0, "ids": []}

    async def on_run(_) -> None:
        run_button.disabled = True
        run_message.object = "checking the values…"
        try:
            values = form.values()
            await ctx.read(_check, entry.path, values)
            run_message.object = "starting the run…"
            run_id = await ctx.read(launch_notebook_run, ctx.settings, entry.path, values, user, backend=backend.value)
        except DsagentError as exc:
            run_message.object = _error_html(exc)
            run_button.disabled = False
            return
        run_message.object = f"Run {run_link(run_id)} started; opening its page…"
        go_to("run", f"?id={run_id}")

    def update_count(*_) -> None:
        sweep_message.object = ""  # a refusal or launch note was about the grid as it was
        if not form.swept():
            sweep_count.object = "Type values (comma-separated) for one or more parameters to sweep a grid."
            sweep_button.disabled, confirm.visible = True, False
            return
        try:
            grid = form.grid()
        except DsagentError as exc:
            sweep_count.object = _error_html(exc)
            sweep_button.disabled, confirm.visible = True, False
            return
        count = ParameterForm.count(grid)
        swept = " × ".join(f"{len(grid[n])} {untrusted.text(n)}" for n in form.swept())
        over = count > limit
        sweep_count.object = (f"<b>{count} run{'s' if count != 1 else ''}</b> ({swept})"
                              + (f" — more than batch_confirm_above ({limit}): tick the box to confirm" if over else ""))
        confirm.visible = over
        sweep_button.disabled = False

    async def on_sweep(_) -> None:
        try:
            grid = form.grid()
            count = ParameterForm.count(grid)
            if count > limit and not confirm.value:
                raise DsagentError(f"the grid makes {count} runs, more than batch_confirm_above ({limit})",
                                   hint="tick “yes, start them all”, or make the grid smaller")
            sweep_button.disabled = True
            sweep_message.object = f"starting a sweep of {count} runs (a Dask cluster starts first)…"
            for params in ParameterForm.first_sets(grid, 1):
                await ctx.read(_check, entry.path, params)
            batch_id = await ctx.read(launch_sweep, ctx.settings, entry.path, grid, user, backend=backend.value,
                                      confirmed=count > limit and confirm.value)
        except DsagentError as exc:
            sweep_message.object = _error_html(exc)
            sweep_button.disabled = False
            return
        sweep_message.object = f"Batch run {run_link(batch_id)} started; opening its page…"
        go_to("run", f"?id={batch_id}")

    async def refresh_runs(*_) -> None:
        async def work() -> None:
            found = await ctx.read(ctx.store.search_runs, kind="notebook", text=entry.name, offset=state["offset"], limit=RUNS_PAGE)
            runs = [r for r in found.items if r.title == entry.name]  # "contains" also matches longer names
            ids = [r.id for r in runs]
            frame = _runs_frame(runs)
            if not frame.equals(runs_table.value):
                chosen = {state["ids"][i] for i in runs_table.selection if i < len(state["ids"])}
                state["ids"] = ids
                runs_table.value = frame
                runs_table.selection = [i for i, run_id in enumerate(ids) if run_id in chosen]
            last = min(found.offset + RUNS_PAGE, found.total)
            position.object = f"runs {found.offset + 1 if found.total else 0}–{last} of {found.total}"
            prev_button.disabled = found.offset == 0
            next_button.disabled = last >= found.total
        await notice.guard(work)

    async def move(step: int) -> None:
        state["offset"] = max(0, state["offset"] + step * RUNS_PAGE)
        await refresh_runs()

    async def older(_) -> None:
        await move(1)

    async def newer(_) -> None:
        await move(-1)

    def on_compare(_) -> None:
        chosen = [state["ids"][i] for i in runs_table.selection if i < len(state["ids"])]
        if len(chosen) < 2:
            compare_message.object = "<span style='color:#dc3545'>Tick two or more runs to compare them.</span>"
            return
        go_to("compare", "?ids=" + ",".join(str(i) for i in sorted(chosen)))

    run_button.on_click(on_run)
    sweep_button.on_click(on_sweep)
    compare_button.on_click(on_compare)
    prev_button.on_click(newer)
    next_button.on_click(older)
    for field in form.fields:
        field.sweep.param.watch(update_count, "value_input")
        field.widget.param.watch(update_count, "value")
    update_count()
    pn.state.onload(refresh_runs)
    pn.state.add_periodic_callback(refresh_runs, period=max(2000, ctx.poll_ms * 4))

    fields = form.widgets() or [pn.pane.Markdown("*No parameters: Run uses the notebook as it is.*")]
    sweeps = [f.sweep for f in form.fields]
    body = [
        notice.pane, about,
        pn.pane.Markdown("### Parameters"), pn.FlexBox(*fields), pn.Row(backend, run_button), run_message,
        pn.pane.Markdown("### Sweep"), pn.FlexBox(*sweeps) if sweeps else pn.pane.Markdown("*Nothing to sweep.*"), sweep_count,
        pn.Row(confirm, sweep_button), sweep_message,
        pn.pane.Markdown("### Recent runs"), pn.Row(prev_button, next_button, position, compare_button), compare_message, runs_table,
    ]
    return page_frame("/notebooks", entry.name, *body, user=current_user())
