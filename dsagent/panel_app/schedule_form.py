"""The Schedules page's form: make a schedule, or change one (``ScheduleForm``).

The cron expression and the time zone are checked at each key (croniter,
through ``schedule_spec``): the cron box says the expression in words and its
next firing, or which field is wrong. A notebook (or a sweep's notebook) is
picked from the runnable notebooks, the list the Notebooks page shows
(``runs/notebook_library.py``), and its parameters are the notebook page's
own form (``parameter_form.ParameterForm``), checked as typed. Saving goes
through ``make_schedule``, the same checks as ``dsagent schedule add``; a
schedule keeps only the parameters that differ from the notebook's defaults.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import panel as pn
import panel_material_ui as pmui
import param

from dsagent.errors import DsagentError
from dsagent.panel_app import untrusted
from dsagent.panel_app.parameter_form import ParameterForm
from dsagent.panel_app.widgets import html_pane

if TYPE_CHECKING:
    from dsagent.artifacts.schedules import Schedule
    from dsagent.panel_app.context import AppContext

__all__ = ["ScheduleForm", "cron_feedback", "relative_time", "notebook_choices"]

KINDS = ["notebook", "agent", "batch"]
_DEFAULT_BACKEND = "(default)"
_PICK_FIRST = "<span class='ds-muted'>Pick a notebook to set its parameters.</span>"


def relative_time(when: datetime | None, now: datetime) -> str:
    """"in 5 min", "2 h 5 min ago": how far a time is from now, in words (minutes at the finest)."""
    if when is None:
        return ""
    seconds = (when - now).total_seconds()
    span = abs(seconds)
    if span < 60:  # minutes at the finest: the list is re-drawn only when its text changes, not every second
        return "within a minute" if seconds >= 0 else "under a minute ago"
    if span < 3600:
        words = f"{span // 60:.0f} min"
    elif span < 86400:
        words = f"{span // 3600:.0f} h {span % 3600 // 60:.0f} min"
    else:
        words = f"{span // 86400:.0f} days" if span >= 2 * 86400 else f"1 day {span % 86400 // 3600:.0f} h"
    return f"in {words}" if seconds >= 0 else f"{words} ago"


def cron_feedback(expr: str, tz: str, now: datetime) -> tuple[bool, str]:
    """(valid, text): the cron in words and its next firing, or which field is wrong; the time zone too."""
    from dsagent.runs.schedule_spec import check_cron, check_timezone, describe_cron, next_fire_after

    try:
        cron = check_cron(expr.strip())
    except DsagentError as exc:
        return False, exc.message
    try:
        check_timezone(tz.strip() or "UTC")
    except DsagentError as exc:
        return False, f"{exc.message} ({exc.hint})"
    upcoming = next_fire_after(cron, tz.strip() or "UTC", now)
    return True, f"{describe_cron(cron)} — next {upcoming.strftime('%Y-%m-%d %H:%M UTC')} ({relative_time(upcoming, now)})"


def notebook_choices(settings: Any) -> dict[str, str]:
    """The runnable notebooks (the Notebooks page's list) as a picker's options: "name · where it is from" -> path."""
    from dsagent.panel_app.notebooks_page import source_text
    from dsagent.runs.notebook_library import list_notebooks

    return {f"{e.name} · {source_text(e)}": str(e.path) for e in list_notebooks(settings, limit=1000).items}


def _set(widget: Any, text: str) -> None:
    """Set a text box from code: ``value_input`` follows (it is what the form reads; the browser alone updates it)."""
    widget.value = text
    widget.value_input = text


def _text(widget: Any) -> str:
    """What the box holds now (``value_input`` follows every key, ``value`` only Enter or leaving the box)."""
    return widget.value_input if widget.value_input is not None else (widget.value or "")


class ScheduleForm(pn.viewable.Viewer):
    """Create or edit a schedule. ``kind`` says what it runs; ``editing`` is the name of the schedule being changed
    (None: a new one). ``valid`` is False while the cron, the time zone or a parameter is wrong."""

    kind = param.Selector(default="notebook", objects=KINDS, doc="what the schedule runs")
    editing = param.String(default=None, allow_None=True, doc="the schedule being changed; None for a new one")
    valid = param.Boolean(default=False, doc="the cron, time zone and parameters are right (Save is on)")

    def __init__(self, ctx: "AppContext", **params: Any) -> None:
        super().__init__(**params)
        self.ctx = ctx
        self.parameters: ParameterForm | None = None
        self._waiting_values: dict[str, Any] = {}  # an edited schedule's values, set once its notebook's form is there
        self._build_fields()
        self._build_target()
        for box in (self.cron_input, self.timezone_input):
            box.param.watch(lambda _: self.check(), "value_input")
        self.notebook_input.param.watch(self._notebook_changed, "value")
        self.check()

    def _build_fields(self) -> None:
        from dsagent.kernel_gateway.registry import backend_registry

        self.title = html_pane("<h2 class='ds-card-title'>New schedule</h2>", margin=0)
        self.name_input = pmui.TextInput(label="Name", placeholder="daily-report", width=220)
        self.cron_input = pmui.TextInput(label="Cron (minute hour day month weekday)", value="0 6 * * 1-5", width=300)
        self.timezone_input = pmui.TextInput(label="Time zone", value="UTC", width=200)
        try:
            backends = backend_registry.names()
        except Exception:  # a broken plugin must not take the page down
            backends = []
        self.backend_input = pmui.Select(label="Backend", options=[_DEFAULT_BACKEND, *backends], value=_DEFAULT_BACKEND, width=160)
        self.overlap_input = pmui.Select(label="If still running", options=["skip", "queue"], value="skip", width=150)
        self.misfire_input = pmui.Select(label="Missed firings", options=["run_once", "skip"], value="run_once", width=150)
        self.notify_input = pmui.TextInput(label="Webhook on failure (optional)", width=300)
        self.save_button = pmui.Button(label="Create schedule", color="primary", icon="save", width=190)
        self.new_button = pmui.Button(label="New instead", variant="outlined", visible=False, width=140)
        self.message = html_pane("", margin=(0, 5))
        self.new_button.on_click(self.reset)

    def _build_target(self) -> None:
        self.kind_input = pmui.RadioButtonGroup(options=KINDS, value=self.kind)
        self.kind_input.param.watch(lambda e: setattr(self, "kind", e.new), "value")
        self.notebook_input = pmui.Select(label="Notebook", options={}, value=None, searchable=True, sizing_mode="stretch_width",
                                          max_width=520)
        self.parameter_area = pn.FlexBox(html_pane(_PICK_FIRST), gap="8px 16px", sizing_mode="stretch_width")
        self.question_input = pmui.TextAreaInput(label="Question for the analysis agent", rows=3, sizing_mode="stretch_width", visible=False)
        self.data_input = pmui.TextInput(label="Data files (comma-separated paths)", sizing_mode="stretch_width", visible=False)
        self.grid_input = pmui.TextInput(label="Grid file (YAML: alpha: [0.1, 0.5])", sizing_mode="stretch_width", visible=False)

    def __panel__(self) -> Any:
        row = dict(gap="8px 16px", flex_wrap="wrap", sizing_mode="stretch_width")
        return pn.Column(
            self.title, pn.FlexBox(self.name_input, self.cron_input, self.timezone_input, **row), self.kind_input,
            self.notebook_input, self.parameter_area, self.question_input, self.data_input, self.grid_input,
            pn.FlexBox(self.backend_input, self.overlap_input, self.misfire_input, self.notify_input, **row),
            pn.FlexBox(self.save_button, self.new_button, align_items="center", **row), self.message, sizing_mode="stretch_width")

    # -- the live checks --------------------------------------------------------------------------------------

    @param.depends("kind", watch=True, on_init=False)
    def _show_kind(self) -> None:
        kind = self.kind
        if self.kind_input.value != kind:
            self.kind_input.value = kind
        self.notebook_input.visible = kind in ("notebook", "batch")
        self.parameter_area.visible = kind == "notebook"
        self.question_input.visible = self.data_input.visible = kind == "agent"
        self.grid_input.visible = kind == "batch"
        self.check()

    def check(self) -> bool:
        """Cron and time zone as typed (cheap and local: croniter, zoneinfo) and the parameters; Save only when all are right."""
        from dsagent.artifacts.models import utcnow

        ok, text = cron_feedback(_text(self.cron_input), _text(self.timezone_input), utcnow())
        self.cron_input.error_state = not ok
        self.cron_input.helper_text = text
        self.timezone_input.error_state = not ok and "time zone" in text
        params_ok = self.kind != "notebook" or self.parameters is None or self.parameters.valid
        self.valid = ok and params_ok
        self.save_button.disabled = not self.valid
        return self.valid

    # -- the notebook and its parameters ----------------------------------------------------------------------

    async def load_notebooks(self) -> None:
        """The picker's options: the runnable notebooks, read now (and the edited schedule's own, if it is elsewhere)."""
        choices = await self.ctx.read(notebook_choices, self.ctx.settings)
        current = self.notebook_input.value
        if current and current not in choices.values():
            choices[f"{Path(current).name} · {current}"] = current
        self.notebook_input.options = choices

    async def _notebook_changed(self, event: Any) -> None:
        path = event.new
        if not path:
            self.show_parameters(None)
            return
        try:
            from dsagent.runs.notebook_input import notebook_parameters

            parameters = await self.ctx.read(notebook_parameters, Path(path))
        except DsagentError as exc:
            self.parameters = None
            self.parameter_area.objects = [html_pane(f"<span style='color:var(--ds-failed)'>{untrusted.text(exc.message)}</span>")]
            self.check()
            return
        if self.notebook_input.value == path:  # not changed again meanwhile
            self.show_parameters(parameters)

    def show_parameters(self, parameters: list[dict[str, Any]] | None) -> None:
        """The chosen notebook's parameters as the notebook page's form (None: no notebook chosen)."""
        if parameters is None:
            self.parameters = None
            self.parameter_area.objects = [html_pane(_PICK_FIRST)]
        else:
            self.parameters = ParameterForm(parameters, sweep=False, width=240)
            self.parameters.param.watch(lambda _: self.check(), "problems")
            unknown = self.parameters.set_values(self._waiting_values)
            self._waiting_values = {}
            shown = self.parameters.widgets() or [html_pane("<span class='ds-muted'>This notebook has no parameters: it runs as it is.</span>")]
            if unknown:  # names from the stored schedule: escaped
                names = ", ".join(untrusted.text(repr(name)) for name in unknown)
                shown.append(html_pane(f"<span style='color:var(--ds-failed)'>The notebook has no parameter {names} any more: saving "
                                       "drops it.</span>"))
            self.parameter_area.objects = shown
        self.check()

    # -- saving, editing --------------------------------------------------------------------------------------

    def build(self) -> "Schedule":
        """The checked ``Schedule`` the fields describe (blocking: reads the notebook; call it in a worker thread)."""
        from dsagent.runs.schedule_spec import make_schedule

        target: dict[str, Any] = {}
        notebook = self.notebook_input.value
        if self.kind in ("notebook", "batch") and not notebook:
            raise DsagentError("no notebook chosen", hint="pick one in the Notebook list (the Notebooks page's notebooks)",
                               reason="bad_target")
        if self.kind == "notebook":
            target = {"notebook": notebook, "parameters": self.parameters.values(changed_only=True) if self.parameters else {}}
        elif self.kind == "agent":
            target = {"agent": _text(self.question_input).strip(), "data": [d.strip() for d in _text(self.data_input).split(",") if d.strip()]}
        else:
            target = {"batch": notebook, "grid": _text(self.grid_input).strip() or None}
        return make_schedule(self.editing or _text(self.name_input).strip(), _text(self.cron_input).strip(), **target,
                             backend=None if self.backend_input.value == _DEFAULT_BACKEND else self.backend_input.value,
                             timezone=_text(self.timezone_input).strip() or "UTC", overlap=self.overlap_input.value,
                             misfire=self.misfire_input.value, notify_url=_text(self.notify_input).strip() or None)

    def load(self, schedule: "Schedule") -> None:
        """Fill the fields from a stored schedule to change it (its notebook's form fills in once read)."""
        t = schedule.target
        self.editing = schedule.name
        _set(self.name_input, schedule.name)
        self.name_input.disabled = True
        _set(self.cron_input, schedule.cron)
        _set(self.timezone_input, schedule.timezone)
        self.kind = t.get("kind", "notebook")
        self._waiting_values = {**t.get("parameters", {}), **t.get("text_parameters", {})}
        notebook = t.get("notebook") or None
        if notebook and notebook not in self.notebook_input.options.values():
            self.notebook_input.options = {**self.notebook_input.options, f"{Path(notebook).name} · {notebook}": notebook}
        if self.notebook_input.value == notebook and self.parameters is not None:  # the same notebook: its form is there
            self.parameters.set_values(self._waiting_values)
            self._waiting_values = {}
        self.notebook_input.value = notebook
        _set(self.question_input, t.get("question", "") or "")
        _set(self.data_input, ", ".join(t.get("data", [])))
        _set(self.grid_input, t.get("grid", "") or "")
        self.backend_input.value = t.get("backend") or _DEFAULT_BACKEND
        self.overlap_input.value, self.misfire_input.value = schedule.overlap, schedule.misfire
        _set(self.notify_input, schedule.notify_url or "")
        self.title.object = f"<h2 class='ds-card-title'>Edit schedule {untrusted.text(schedule.name)}</h2>"
        self.save_button.label, self.new_button.visible = "Save changes", True
        self.check()

    def reset(self, *_: Any) -> None:
        """Back to a new schedule (the fields keep their values but the name, so a similar one is quick to make)."""
        self.editing = None
        _set(self.name_input, "")
        self.name_input.disabled = False
        self.title.object = "<h2 class='ds-card-title'>New schedule</h2>"
        self.save_button.label, self.new_button.visible = "Create schedule", False
