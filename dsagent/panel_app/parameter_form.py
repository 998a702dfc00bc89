"""A notebook's parameters as a form: one Material UI field per parameter, checked as it is typed, read back typed.

The notebook page (Run, Sweep) and the Schedules page (a scheduled notebook's
parameters) use this one form. The parameters come from papermill's inference
(``notebook_parameters``: name, type, default, help). A bool gets a checkbox;
every other parameter a text box: an int, a float, a str, and a list, tuple or
dict as a Python literal. A parameter whose default is an expression
(``pd.Timestamp(...)``) gets a box left empty: empty keeps the notebook's own
default. With ``sweep=True`` each parameter also has a "sweep values" box:
comma-separated values make a grid for a sweep.

Text boxes rather than Material UI's number inputs: those put back the last
good number when the box loses focus, so "three" or "3.7" in an int box
silently became the default again. Here every box is checked at each key
(``value_input``): a value that is not of its parameter's type turns the box
red and says what is wrong under it (``problems`` lists them; a page keeps its
button off until it is empty), and reading the values raises
``ParameterInputError`` naming the parameter.
"""

from __future__ import annotations

import ast
import itertools
import math
from dataclasses import dataclass
from typing import Any

import panel_material_ui as pmui
import param

from dsagent.errors import DsagentError

__all__ = ["ParameterForm", "ParameterInputError", "parse_sweep_values"]

_TEXT_LITERALS = ("list", "tuple", "dict")
#: how a kind is named in a message ("'three' is not a whole number")
_WORDS = {"int": "a whole number", "float": "a number", "bool": "True or False", "str": "text", "list": "a Python list",
          "tuple": "a Python list or tuple", "dict": "a Python dict"}
_EXAMPLES = {"int": "3", "float": "0.5", "bool": "True", "str": "eu", "list": "['eu', 'us']", "tuple": "(1, 2)", "dict": "{'k': 1}"}
_SWEEP_EXAMPLES = {"int": "1, 2, 3", "float": "0.1, 0.5", "bool": "True, False", "str": "eu, us", "list": "[1, 2], [3]",
                   "dict": "{'a': 1}, {'a': 2}"}


class ParameterInputError(DsagentError):
    """A value typed into the form is not of its parameter's type (fields: parameter, expected, problem: the short
    text shown under the box)."""


def _literal(text: str) -> tuple[bool, Any]:
    try:
        return True, ast.literal_eval(text.strip())
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return False, None


def _matches(kind: str, value: Any) -> bool:
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "str":
        return isinstance(value, str)
    if kind in ("list", "tuple"):
        return isinstance(value, (list, tuple))
    if kind == "dict":
        return isinstance(value, dict)
    return True


def _article(kind: str) -> str:
    return f"an {kind}" if kind[:1] in "aeiou" else f"a {kind}"


def _wrong(name: str, kind: str, text: str, example: str) -> ParameterInputError:
    words = _WORDS.get(kind, _article(kind))
    return ParameterInputError(f"parameter {name!r} takes {_article(kind)}; {text!r} is not one", hint=f"type {words}, e.g. {example}",
                               parameter=name, expected=kind, problem=f"{text!r} is not {words}: type one, e.g. {example}")


def _empty(name: str, kind: str, example: str) -> ParameterInputError:
    return ParameterInputError(f"parameter {name!r} needs {_article(kind)} value; the box is empty", hint=f"type one, e.g. {example}",
                               parameter=name, expected=kind, problem=f"empty: type {_WORDS.get(kind, 'a value')}, e.g. {example}")


def parse_sweep_values(name: str, kind: str, text: str) -> list[Any]:
    """Comma-separated values for one parameter, each read as ``kind`` (a str's values are taken as written)."""
    if kind == "str":
        values: list[Any] = [part.strip() for part in text.split(",") if part.strip()]
    elif kind in _TEXT_LITERALS:
        ok, parsed = _literal(f"[{text}]")  # values of a list parameter are themselves literals: [1, 2], [3]
        if not ok:
            raise _wrong(name, f"list of {kind} values", text, "[1, 2], [3]")
        values = list(parsed)
    else:
        values = []
        for part in (p.strip() for p in text.split(",")):
            if not part:
                continue
            if kind == "bool" and part.lower() in ("true", "false"):
                values.append(part.lower() == "true")
                continue
            ok, value = _literal(part)
            if not ok or not _matches(kind, value):
                raise _wrong(name, kind, part, _SWEEP_EXAMPLES.get(kind, "1, 2"))
            values.append(float(value) if kind == "float" else value)
    for value in values:
        if not _matches(kind, value):
            raise _wrong(name, kind, repr(value), "1, 2")
    if not values:
        raise ParameterInputError(f"no values for parameter {name!r} in the sweep", hint="type values separated by commas, or clear the box",
                                  parameter=name, expected=kind, problem="no values: type some, separated by commas")
    return values


@dataclass
class _Field:
    name: str
    kind: str  # int, float, bool, str, list, tuple, dict, or "any" (no literal default)
    default_text: str
    has_literal_default: bool
    help: str  # what the box says under it while its value is right
    widget: Any  # pmui.TextInput, or pmui.Checkbox for a bool
    sweep: Any  # pmui.TextInput ("sweep values"), or None without sweeps

    @property
    def example(self) -> str:
        return self.default_text if self.has_literal_default and self.default_text else _EXAMPLES.get(self.kind, "1")


class ParameterForm(param.Parameterized):
    """The fields for one notebook's parameters; ``values()`` and ``grid()`` read them back typed.

    ``problems`` (parameter or sweep box -> what is wrong) follows the boxes as they are typed; each wrong box is
    red with the reason under it."""

    problems = param.Dict(default={}, doc="box label -> what is wrong with what it holds now; empty when every box is right")

    def __init__(self, parameters: list[dict[str, Any]], *, sweep: bool = True, width: int = 260, **params: Any) -> None:
        super().__init__(**params)
        self.fields = [self._field(p, sweep, width) for p in parameters]
        for field in self.fields:
            if isinstance(field.widget, pmui.TextInput):
                field.widget.param.watch(lambda _, f=field: self._check_value(f), "value_input")
            if field.sweep is not None:
                field.sweep.param.watch(lambda _, f=field: self._check_sweep(f), "value_input")

    @staticmethod
    def _field(parameter: dict[str, Any], sweep: bool, width: int) -> _Field:
        name, kind, text = parameter["name"], str(parameter["type"]), str(parameter["default"])
        if kind not in ("int", "float", "bool", "str", *_TEXT_LITERALS):
            kind = "any"
        ok, default = _literal(text)
        usable = ok and _matches(kind, default) and not (isinstance(default, float) and math.isnan(default))
        label = f"{name} ({kind})"
        helptext = parameter.get("help") or ("" if usable else "empty keeps the notebook's default")
        if usable and kind == "bool":
            widget: Any = pmui.Checkbox(label=label, value=default, width=width, **({"description": helptext} if helptext else {}))
        else:
            shown = "" if not usable else default if kind == "str" else repr(float(default) if kind == "float" else default)
            widget = pmui.TextInput(label=label, value=shown, helper_text=helptext or f"default: {text}"[:80],
                                    placeholder=f"default: {text}"[:80] if not usable else "", width=width)
        box = pmui.TextInput(label=f"{name}: sweep values", placeholder="comma-separated, e.g. " + _SWEEP_EXAMPLES.get(kind, "1, 2"),
                             width=width) if sweep else None
        return _Field(name, kind, text, usable, helptext or f"default: {text}"[:80], widget, box)

    def widgets(self) -> list[Any]:
        return [f.widget for f in self.fields]

    def sweep_widgets(self) -> list[Any]:
        return [f.sweep for f in self.fields if f.sweep is not None]

    @property
    def valid(self) -> bool:
        return not self.problems

    # -- checking as typed ------------------------------------------------------------------------------------

    def _mark(self, key: str, box: Any, problem: str | None, helper: str) -> None:
        box.error_state = problem is not None
        box.helper_text = problem or helper
        problems = dict(self.problems)
        if problem is None:
            problems.pop(key, None)
        else:
            problems[key] = problem
        if problems != self.problems:
            self.problems = problems

    def _check_value(self, field: _Field) -> None:
        try:
            self.value_of(field)
        except ParameterInputError as exc:
            self._mark(field.name, field.widget, exc.fields.get("problem") or exc.message, field.help)
        else:
            self._mark(field.name, field.widget, None, field.help)

    def _check_sweep(self, field: _Field) -> None:
        text = _typed(field.sweep)
        problem = None
        if text.strip():
            try:
                parse_sweep_values(field.name, field.kind, text)
            except ParameterInputError as exc:
                problem = exc.fields.get("problem") or exc.message
        self._mark(f"{field.name}: sweep values", field.sweep, problem, "")

    def check(self) -> bool:
        """Check every box now (as a key in each would); True when all are right."""
        for field in self.fields:
            if isinstance(field.widget, pmui.TextInput):
                self._check_value(field)
            if field.sweep is not None:
                self._check_sweep(field)
        return self.valid

    # -- reading ----------------------------------------------------------------------------------------------

    def value_of(self, field: _Field) -> tuple[bool, Any]:
        """``(given, value)``: False when the notebook's own default applies."""
        name, kind = field.name, field.kind
        if isinstance(field.widget, pmui.Checkbox):
            return True, bool(field.widget.value)
        text = _typed(field.widget)
        if kind == "str" and field.has_literal_default:
            return True, text
        if not text.strip():
            if field.has_literal_default:
                raise _empty(name, kind, field.example)
            return False, None
        ok, value = _literal(text)
        if kind == "any":
            return True, value if ok else text  # no declared type: a literal if it is one, else the text
        if not ok or not _matches(kind, value):
            raise _wrong(name, kind, text.strip(), field.example)
        if kind == "float":
            return True, float(value)
        return True, list(value) if kind == "tuple" else value

    def values(self, *, changed_only: bool = False) -> dict[str, Any]:
        """The parameters to run with (typed); the first wrong one raises ``ParameterInputError``. ``changed_only``:
        only those whose value differs from the notebook's default (what a schedule keeps, so a later change of the
        notebook's defaults still counts)."""
        found = {}
        for field in self.fields:
            given, value = self.value_of(field)
            if given and not (changed_only and field.has_literal_default and _literal(field.default_text)[1] == value):
                found[field.name] = value
        return found

    def set_values(self, values: dict[str, Any]) -> list[str]:
        """Fill the boxes from stored values (a schedule's); the names the form has no box for."""
        by_name = {f.name: f for f in self.fields}
        for name, value in values.items():
            field = by_name.get(name)
            if field is None:
                continue
            if isinstance(field.widget, pmui.Checkbox):
                field.widget.value = value if isinstance(value, bool) else str(value).strip().lower() in ("true", "1", "yes")
            else:  # text (a str's value, or a text parameter as typed: -p n 3) as it is, other values as Python writes them
                field.widget.value = value if isinstance(value, str) else repr(value)
        self.check()
        return [name for name in values if name not in by_name]

    def grid(self) -> dict[str, list[Any]]:
        """A sweep's grid: swept parameters get their list of values, the others the form's one value."""
        grid: dict[str, list[Any]] = {}
        for field in self.fields:
            text = _typed(field.sweep) if field.sweep is not None else ""
            if text.strip():
                grid[field.name] = parse_sweep_values(field.name, field.kind, text)
            else:
                given, value = self.value_of(field)
                if given:
                    grid[field.name] = [value]
        return grid

    def swept(self) -> list[str]:
        return [f.name for f in self.fields if f.sweep is not None and _typed(f.sweep).strip()]

    @staticmethod
    def count(grid: dict[str, list[Any]]) -> int:
        return math.prod(len(v) for v in grid.values()) if grid else 0

    @staticmethod
    def first_sets(grid: dict[str, list[Any]], n: int = 3) -> list[dict[str, Any]]:
        return [dict(zip(grid, combo)) for combo in itertools.islice(itertools.product(*grid.values()), n)]


def _typed(box: Any) -> str:
    """What a text box holds as it is typed (``value_input`` follows each key; ``value`` only Enter or leaving the box)."""
    if box.value_input is not None:
        return box.value_input
    return box.value or ""
