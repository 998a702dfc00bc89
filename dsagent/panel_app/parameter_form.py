"""A notebook's parameters as a form: one Panel widget per parameter, chosen by its type, and the values read back typed.

The parameters come from papermill's inference (``notebook_parameters``: name,
type, default, help). int, float, bool and str get number inputs, a checkbox
and a text box; list, tuple and dict a text box holding a Python literal.
A parameter whose default is an expression (``pd.Timestamp(...)``) gets a text
box left empty: empty keeps the notebook's own default. Each parameter also
has a "sweep values" box: comma-separated values make a grid for a sweep.

Values that cannot be read as the parameter's type raise ``ParameterInputError``
naming the parameter; the page shows that instead of starting anything.
"""

from __future__ import annotations

import ast
import itertools
import math
from dataclasses import dataclass
from typing import Any

import panel as pn

from dsagent.errors import DsagentError

__all__ = ["ParameterForm", "ParameterInputError", "parse_sweep_values"]

_TEXT_LITERALS = ("list", "tuple", "dict")


class ParameterInputError(DsagentError):
    """A value typed into the form is not of its parameter's type (fields: parameter, expected)."""


def _literal(text: str) -> tuple[bool, Any]:
    try:
        return True, ast.literal_eval(text)
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


def _wrong(name: str, kind: str, text: str, example: str) -> ParameterInputError:
    return ParameterInputError(f"parameter {name!r} takes a {kind}; {text!r} is not one", hint=f"type a {kind}, e.g. {example}",
                               parameter=name, expected=kind)


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
                raise _wrong(name, kind, part, {"int": "1, 2, 3", "float": "0.1, 0.5", "bool": "True, False"}.get(kind, "1, 2"))
            values.append(float(value) if kind == "float" else value)
    for value in values:
        if not _matches(kind, value):
            raise _wrong(name, kind, repr(value), "1, 2")
    if not values:
        raise ParameterInputError(f"no values for parameter {name!r} in the sweep", hint="type values separated by commas, or clear the box",
                                  parameter=name, expected=kind)
    return values


@dataclass
class _Field:
    name: str
    kind: str  # int, float, bool, str, list, tuple, dict, or "any" (no literal default)
    default_text: str
    has_literal_default: bool
    widget: Any
    sweep: Any


class ParameterForm:
    """The widgets for one notebook's parameters; ``values()`` and ``grid()`` read them back typed."""

    def __init__(self, parameters: list[dict[str, Any]]) -> None:
        self.fields = [self._field(p) for p in parameters]

    @staticmethod
    def _field(param: dict[str, Any]) -> _Field:
        name, kind, text, helptext = param["name"], str(param["type"]), str(param["default"]), param.get("help") or ""
        if kind not in ("int", "float", "bool", "str", *_TEXT_LITERALS):
            kind = "any"
        ok, default = _literal(text)
        usable = ok and _matches(kind, default) and not (isinstance(default, float) and math.isnan(default))
        label = f"{name} ({kind})"
        common = dict(name=label, description=helptext or f"default: {text}", width=260)
        if usable and kind == "int":
            widget: Any = pn.widgets.IntInput(value=default, **common)
        elif usable and kind == "float":
            widget = pn.widgets.FloatInput(value=float(default), **common)
        elif usable and kind == "bool":
            widget = pn.widgets.Checkbox(value=default, name=label, width=260)
        elif usable and kind == "str":
            widget = pn.widgets.TextInput(value=default, **common)
        elif usable:  # list, tuple, dict, or a literal of no declared type: its Python text
            widget = pn.widgets.TextInput(value=repr(default), **common)
        else:  # an expression: empty keeps the notebook's default
            widget = pn.widgets.TextInput(value="", placeholder=f"default: {text}"[:80], **common)
        sweep = pn.widgets.TextInput(name=f"{name}: sweep values", placeholder="comma-separated, e.g. " + _example(kind), width=260)
        return _Field(name, kind, text, usable, widget, sweep)

    def widgets(self) -> list[Any]:
        return [f.widget for f in self.fields]

    def value_of(self, field: _Field) -> tuple[bool, Any]:
        """``(given, value)``: False when the notebook's own default applies."""
        widget, name, kind = field.widget, field.name, field.kind
        if isinstance(widget, pn.widgets.Checkbox):
            return True, bool(widget.value)
        if isinstance(widget, (pn.widgets.IntInput, pn.widgets.FloatInput)):
            if widget.value is None:
                raise ParameterInputError(f"parameter {name!r} needs a {kind} value; the box is empty", hint=f"type a {kind}, e.g. {field.default_text}",
                                          parameter=name, expected=kind)
            return True, int(widget.value) if kind == "int" else float(widget.value)
        text = widget.value  # the browser sends it when the box loses focus, so before a button's click
        if kind == "str" and field.has_literal_default:
            return True, text
        if not (text or "").strip():
            if field.has_literal_default:
                raise ParameterInputError(f"parameter {name!r} needs a {kind} value; the box is empty", hint=f"type one, e.g. {field.default_text}",
                                          parameter=name, expected=kind)
            return False, None
        ok, value = _literal(text)
        if kind == "any":
            return True, value if ok else text  # no declared type: a literal if it is one, else the text
        if not ok or not _matches(kind, value):
            raise _wrong(name, kind, text, field.default_text)
        return True, list(value) if kind == "tuple" else value

    def values(self) -> dict[str, Any]:
        """The parameters to run with (typed); the first bad one raises ``ParameterInputError``."""
        found = {}
        for field in self.fields:
            given, value = self.value_of(field)
            if given:
                found[field.name] = value
        return found

    def grid(self) -> dict[str, list[Any]]:
        """A sweep's grid: swept parameters get their list of values, the others the form's one value."""
        grid: dict[str, list[Any]] = {}
        for field in self.fields:
            text = _typed(field.sweep)
            if text.strip():
                grid[field.name] = parse_sweep_values(field.name, field.kind, text)
            else:
                given, value = self.value_of(field)
                if given:
                    grid[field.name] = [value]
        return grid

    def swept(self) -> list[str]:
        return [f.name for f in self.fields if _typed(f.sweep).strip()]

    @staticmethod
    def count(grid: dict[str, list[Any]]) -> int:
        return math.prod(len(v) for v in grid.values()) if grid else 0

    @staticmethod
    def first_sets(grid: dict[str, list[Any]], n: int = 3) -> list[dict[str, Any]]:
        return [dict(zip(grid, combo)) for combo in itertools.islice(itertools.product(*grid.values()), n)]


def _typed(box: Any) -> str:
    """What a sweep box holds as it is typed (``value_input`` follows each key; ``value`` only Enter or leaving the box)."""
    return box.value_input or box.value or ""


def _example(kind: str) -> str:
    return {"int": "1, 2, 3", "float": "0.1, 0.5", "bool": "True, False", "str": "eu, us", "list": "[1, 2], [3]",
            "dict": "{'a': 1}, {'a': 2}"}.get(kind, "1, 2")
