"""One notebook's page (``/notebook?path=...``): its parameters as a form, Run, a sweep over a grid, its recent runs.

**Run** checks the values (each box as it is typed, ``parameter_form``; then
papermill's own check in ``prepare_notebook``) and starts ``dsagent run`` as a
child process (``actions.launch_notebook_run``); the browser then goes to the
run's page, which follows it live. **Sweep**: comma-separated values per
parameter make a grid (the count shows as it is typed; above
``batch_confirm_above`` a confirmation box must be ticked) started as
``dsagent batch`` (``actions.launch_sweep``); the browser goes to the batch
run's page. **Compare**: tick two or more of the notebook's recent runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pandas as pd
import panel as pn
import panel_material_ui as pmui
import param

from dsagent.errors import DsagentError, NotFound
from dsagent.panel_app import formats, untrusted
from dsagent.panel_app.actions import launch_notebook_run, launch_sweep
from dsagent.panel_app.components import card, empty_state, not_found_page, status_chip
from dsagent.panel_app.layout import after_first_paint, page_frame
from dsagent.panel_app.paging import Pager, TableSlot
from dsagent.panel_app.parameter_form import ParameterForm
from dsagent.panel_app.widgets import Notice, Poller, Table, current_user, html_pane, query_arg, run_link

if TYPE_CHECKING:
    from pathlib import Path

    from dsagent.artifacts.models import Run
    from dsagent.panel_app.context import AppContext
    from dsagent.runs.notebook_library import NotebookEntry

__all__ = ["NotebookView", "page", "go_to", "describe_notebook", "params_text"]

RUNS_PAGE = 20
RUN_COLUMNS = ["run", "status", "started", "duration", "parameters"]
_WIDTHS = {"run": 70, "status": 128, "started": 112, "duration": 100, "parameters": 360}
_WRAP_CSS = "code {overflow-wrap: anywhere}"  # a long path wraps on a phone instead of widening the page
_ERROR = "<span style='color:var(--ds-failed)'><b>{message}</b></span>{hint}"


def go_to(route: str, search: str) -> None:
    """Send this browser to another dashboard page (``route`` next to the current one, e.g. ``run``)."""
    location = pn.state.location
    base = (location.pathname or "/").rsplit("/", 1)[0]
    location.reload = False
    location.param.update(pathname=f"{base}/{route}", search=search)  # pushed into the history first,
    location.reload = True  # then the browser loads it


def describe_notebook(path: "Path") -> tuple[list[dict[str, Any]], bool]:
    """The notebook's parameters (papermill's inference) and whether it has a cell tagged ``parameters``."""
    from dsagent.runs.notebook_input import notebook_parameters, peek_notebook

    data = peek_notebook(path)
    tagged = any("parameters" in ((c.get("metadata") or {}).get("tags") or []) for c in data.get("cells") or [])
    return notebook_parameters(path), tagged


def _check(path: "Path", values: dict[str, Any]) -> None:
    """Papermill's own check of the values, as ``dsagent run`` will do it (``NotebookError`` names the parameter)."""
    from dsagent.runs.notebook_cells import notebook_kernel_name
    from dsagent.runs.notebook_input import peek_notebook, prepare_notebook

    prepare_notebook(path, notebook_kernel_name(peek_notebook(path), None, path=str(path)), values)


def params_text(params: dict[str, Any] | None, limit: int = 200) -> str:
    """A run's parameters as people read them: ``scale=5, label='first'`` (plain text: escape it to show it)."""
    text = ", ".join(f"{k}={v!r}" for k, v in (params or {}).items())
    return text if len(text) <= limit else text[:limit] + "…"


def _runs_frame(runs: "list[Run]", now=None) -> pd.DataFrame:
    """The runs as the table's rows: links, chips and times as HTML; the parameters a plain cell (Tabulator escapes it)."""
    now = now or formats.minute_now()
    return pd.DataFrame(
        [{"run": run_link(r.id), "status": status_chip(r.status), "started": formats.time_cell(r.started or r.created, now),
          "duration": formats.run_duration(r), "parameters": params_text(r.params)} for r in runs],
        columns=RUN_COLUMNS,
    )


def _error_html(exc: DsagentError) -> str:
    return _ERROR.format(message=untrusted.text(exc.message), hint=f" {untrusted.text(exc.hint)}" if exc.hint else "")


def _backends() -> list[str]:
    from dsagent.kernel_gateway.registry import backend_registry

    return backend_registry.names()


class NotebookView(pn.viewable.Viewer):
    """One notebook's page. Its state: the recent runs' page (``offset``) and the runs ticked for Compare; the form's
    ``problems`` keep Run and Launch sweep off. ``on_run``, ``on_sweep``, ``on_compare``, ``on_older``, ``on_newer``
    are the buttons' handlers."""

    offset = param.Integer(default=0, bounds=(0, None), doc="the first of the notebook's runs shown")
    launching = param.Selector(default="", objects=["", "run", "sweep"], doc="what is being started: a run, a sweep, or nothing")

    def __init__(self, ctx: "AppContext", entry: "NotebookEntry", parameters: list[dict[str, Any]], tagged: bool, **params: Any) -> None:
        super().__init__(**params)
        self.ctx, self.entry, self.tagged = ctx, entry, tagged
        self.user = current_user() or "anonymous"
        self.notice = Notice()
        self.form = ParameterForm(parameters)
        self._ids: list[int] = []  # the runs shown, in the table's order
        self._grid: dict[str, list[Any]] | None = None  # the sweep's grid as the boxes make it now
        self._build_launchers()
        self._build_runs()
        self.form.param.watch(lambda _: self._count_sweep(), "problems")
        for field in self.form.fields:
            if field.sweep is not None:
                field.sweep.param.watch(lambda _: self._count_sweep(), "value_input")
        self._count_sweep()
        Poller(self.refresh_runs, max(2000, ctx.poll_ms * 4))

    def _build_launchers(self) -> None:
        names = _backends()
        default = self.ctx.settings.backend if self.ctx.settings.backend in names else names[0]
        self.backend = pmui.Select(label="Backend", options=names, value=default, width=160)
        self.run_button = pmui.Button(label="Run", color="primary", icon="play_arrow", width=110)
        self.run_message = html_pane("", margin=(0, 5))
        self.run_problems = html_pane("", margin=(0, 5))  # which boxes keep Run off
        self.sweep_count = html_pane("", margin=(0, 5))
        self.confirm = pmui.Checkbox(label="yes, start them all", visible=False)
        self.sweep_button = pmui.Button(label="Launch sweep", color="primary", icon="grid_view", disabled=True, width=160)
        self.sweep_message = html_pane("", margin=(0, 5))
        self.run_button.on_click(self.on_run)
        self.sweep_button.on_click(self.on_sweep)

    def _build_runs(self) -> None:
        self.runs = TableSlot(_runs_table)  # made with its first rows (paging.TableSlot says why)
        self.runs_empty = html_pane(empty_state(
            "No runs of this notebook yet", "Press <b>Run</b> above, or from a terminal: "
            f"<code>dsagent run {untrusted.text(str(self.entry.path))}</code>"), visible=False)
        self.runs_loading = html_pane(_loading())
        self.compare_button = pmui.Button(label="Compare selected", variant="outlined", icon="compare_arrows", width=190)
        self.compare_message = html_pane("", margin=(0, 5))
        self.pager = Pager(self.on_newer, self.on_older, position_width=160, visible=False,
                           extra=(after_first_paint(self.compare_button, height=40, sizing_mode=None, width=200),))
        self.compare_button.on_click(self.on_compare)

    def __panel__(self) -> Any:
        count = len(self.form.fields)
        about = (f"<code>{untrusted.text(str(self.entry.path))}</code> · {count} parameter{'s' if count != 1 else ''}"
                 + ("" if self.tagged else "<br><b>This notebook has no cell tagged <code>parameters</code>: it runs with its own "
                    "values.</b> Tag a cell <code>parameters</code> in Jupyter to set them here."))
        fields = self.form.widgets() or [html_pane("<i>No parameters: Run uses the notebook as it is.</i>")]
        launch = pn.FlexBox(self.backend, self.run_button, align_items="center", gap="12px", sizing_mode="stretch_width")
        sweeps = self.form.sweep_widgets() or [html_pane("<i>Nothing to sweep.</i>")]
        sweep_row = pn.FlexBox(self.confirm, self.sweep_button, align_items="center", gap="12px", sizing_mode="stretch_width")
        return page_frame(
            "/notebooks", self.entry.name, self.notice.pane, card(html_pane(about, margin=0, stylesheets=[_WRAP_CSS])),
            card(after_first_paint(pn.FlexBox(*fields, gap="8px 16px", sizing_mode="stretch_width"), launch, height=140),
                 self.run_problems, self.run_message, title="Parameters"),
            card(html_pane("<span class='ds-muted'>Type comma-separated values for one or more parameters: one run per "
                           "combination, on Dask (<code>dsagent batch</code>).</span>", margin=0),
                 after_first_paint(pn.FlexBox(*sweeps, gap="8px 16px", sizing_mode="stretch_width"), height=80),
                 self.sweep_count, after_first_paint(sweep_row, height=48), self.sweep_message, title="Sweep"),
            card(self.pager.row, self.compare_message, self.runs_loading, self.runs.area, self.runs_empty, title="Recent runs"),
            user=current_user())

    # -- Run and Sweep ----------------------------------------------------------------------------------------

    @param.depends("launching", watch=True)
    def _sync_buttons(self) -> None:
        """Run only while every parameter box is right, Launch sweep only for a grid that is; neither during a launch."""
        wrong_values = {k: v for k, v in self.form.problems.items() if not k.endswith(": sweep values")}
        self.run_problems.object = _problems_html(wrong_values) if wrong_values else ""
        self.run_button.disabled = bool(self.launching) or bool(wrong_values)
        self.run_button.loading = self.launching == "run"
        self.sweep_button.disabled = bool(self.launching) or self._grid is None
        self.sweep_button.loading = self.launching == "sweep"

    async def on_run(self, _: Any) -> None:
        if not self.form.check():
            self.run_message.object = _problems_html(self.form.problems)
            return
        self.launching = "run"
        self.run_message.object = "checking the values…"
        try:
            values = self.form.values()
            await self.ctx.read(_check, self.entry.path, values)
            self.run_message.object = "starting the run…"
            run_id = await self.ctx.read(launch_notebook_run, self.ctx.settings, self.entry.path, values, self.user,
                                         backend=self.backend.value)
        except DsagentError as exc:
            self.run_message.object = _error_html(exc)
            self.launching = ""
            return
        self.run_message.object = f"Run {run_link(run_id)} started; opening its page…"
        go_to("run", f"?id={run_id}")

    def _count_sweep(self) -> None:
        """How many runs the sweep's grid makes, said as it is typed (a refusal or launch note was about the grid as it was)."""
        self.sweep_message.object = ""
        self._grid, self.sweep_count.object = self._sweep_grid()
        self.confirm.visible = self._grid is not None and ParameterForm.count(self._grid) > self.ctx.settings.batch_confirm_above
        self._sync_buttons()

    def _sweep_grid(self) -> tuple[dict[str, list[Any]] | None, str]:
        """The grid the boxes make (None if none or a box is wrong) and what to say about it."""
        swept = self.form.swept()
        if not swept:
            return None, "<span class='ds-muted'>No values to sweep yet.</span>"
        if not self.form.valid:
            return None, _problems_html(self.form.problems)
        try:
            grid = self.form.grid()
        except DsagentError as exc:
            return None, _error_html(exc)
        count, limit = ParameterForm.count(grid), self.ctx.settings.batch_confirm_above
        words = " × ".join(f"{len(grid[n])} {untrusted.text(n)}" for n in swept)
        return grid, (f"<b>{count} run{'s' if count != 1 else ''}</b> ({words})"
                      + (f" — more than batch_confirm_above ({limit}): tick the box to confirm" if count > limit else ""))

    async def on_sweep(self, _: Any) -> None:
        limit = self.ctx.settings.batch_confirm_above
        try:
            grid = self.form.grid()
            count = ParameterForm.count(grid)
            if count > limit and not self.confirm.value:
                raise DsagentError(f"the grid makes {count} runs, more than batch_confirm_above ({limit})",
                                   hint="tick “yes, start them all”, or make the grid smaller")
            self.launching = "sweep"
            self.sweep_message.object = f"starting a sweep of {count} runs (a Dask cluster starts first)…"
            for params in ParameterForm.first_sets(grid, 1):
                await self.ctx.read(_check, self.entry.path, params)
            batch_id = await self.ctx.read(launch_sweep, self.ctx.settings, self.entry.path, grid, self.user, backend=self.backend.value,
                                           confirmed=count > limit and self.confirm.value)
        except DsagentError as exc:
            self.sweep_message.object = _error_html(exc)
            self.launching = ""
            return
        self.sweep_message.object = f"Batch run {run_link(batch_id)} started; opening its page…"
        go_to("run", f"?id={batch_id}")

    # -- the notebook's runs ----------------------------------------------------------------------------------

    async def refresh_runs(self) -> None:
        async def work() -> None:
            found = await self.ctx.read(self.ctx.store.search_runs, kind="notebook", text=self.entry.name, offset=self.offset,
                                        limit=RUNS_PAGE)
            self._show_runs([r for r in found.items if r.title == self.entry.name], found)  # "contains" also matches longer names
        await self.notice.guard(work)

    def _show_runs(self, runs: "list[Run]", found: Any) -> None:
        chosen = self._chosen()
        self._ids = [r.id for r in runs]
        if self.runs.show(_runs_frame(runs)):  # the same table, new rows: the runs still listed stay ticked
            self.runs.table.selection = [i for i, run_id in enumerate(self._ids) if run_id in chosen]
        shown = bool(runs)
        self.pager.show("runs", found.offset, len(found.items) if shown else 0, found.total)
        self.runs_loading.visible = False
        self.runs_empty.visible = not shown

    def _chosen(self) -> list[int]:
        if self.runs.table is None:
            return []
        return [self._ids[i] for i in self.runs.table.selection if i < len(self._ids)]

    async def on_older(self, _: Any) -> None:
        self.offset += RUNS_PAGE
        await self.refresh_runs()

    async def on_newer(self, _: Any) -> None:
        self.offset = max(0, self.offset - RUNS_PAGE)
        await self.refresh_runs()

    def on_compare(self, _: Any) -> None:
        chosen = self._chosen()
        if len(chosen) < 2:
            self.compare_message.object = "<span style='color:var(--ds-failed)'>Tick two or more runs to compare them.</span>"
            return
        go_to("compare", "?ids=" + ",".join(str(i) for i in sorted(chosen)))


def _runs_table(frame: pd.DataFrame) -> Table:
    """The recent runs' table, made with its first rows. No height: a page of 20 runs is its height; on a phone it
    scrolls sideways inside its card."""
    return Table(frame, show_index=False, disabled=True, selectable="checkbox", sizing_mode="stretch_width", layout="fit_columns",
                 widths=_WIDTHS, name="notebook-runs", formatters={c: {"type": "html"} for c in ("run", "status", "started")},
                 configuration={"columnDefaults": {"headerSort": False}})


def _problems_html(problems: dict[str, str]) -> str:
    names = ", ".join(f"<b>{untrusted.text(name)}</b>" for name in problems)
    return f"<span style='color:var(--ds-failed)'>Fix the marked box{'es' if len(problems) != 1 else ''} first: {names}.</span>"


def _loading() -> str:
    from dsagent.panel_app.components import loading_placeholder

    return loading_placeholder(3, "loading the notebook's runs")


def page(ctx: "AppContext") -> Any:
    from dsagent.runs.notebook_library import find_notebook

    raw = query_arg("path") or query_arg("name") or ""
    try:
        entry = find_notebook(raw, ctx.settings)
        parameters, tagged = describe_notebook(entry.path)
    except (NotFound, DsagentError) as exc:
        return not_found_page("/notebooks", "Notebook", f"{untrusted.text(exc.message)}. {untrusted.text(exc.hint or '')}",
                              "./notebooks", "All notebooks", user=current_user())
    return NotebookView(ctx, entry, parameters, tagged)
