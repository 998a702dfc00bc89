"""The parameter form's widgets per type and its typed reading (Panel widgets, no server)."""

from __future__ import annotations

import panel as pn
import pytest

from dsagent.panel_app.parameter_form import ParameterForm, ParameterInputError, parse_sweep_values

PARAMS = [
    {"name": "n", "type": "int", "default": "3", "help": "how many"},
    {"name": "alpha", "type": "float", "default": "0.5", "help": ""},
    {"name": "on", "type": "bool", "default": "True", "help": ""},
    {"name": "region", "type": "str", "default": "'eu'", "help": ""},
    {"name": "cols", "type": "list", "default": "['a', 'b']", "help": ""},
    {"name": "opts", "type": "dict", "default": "{'k': 1}", "help": ""},
    {"name": "when", "type": "any", "default": "pd.Timestamp('2024-01-01')", "help": ""},
]


def test_one_widget_per_type_with_defaults_and_help():
    form = ParameterForm(PARAMS)
    kinds = [type(w) for w in form.widgets()]
    assert kinds == [pn.widgets.IntInput, pn.widgets.FloatInput, pn.widgets.Checkbox, pn.widgets.TextInput, pn.widgets.TextInput,
                     pn.widgets.TextInput, pn.widgets.TextInput]
    assert form.widgets()[0].description == "how many"
    # an expression default is not passed: the notebook's own value applies
    assert form.values() == {"n": 3, "alpha": 0.5, "on": True, "region": "eu", "cols": ["a", "b"], "opts": {"k": 1}}


def test_wrong_types_are_refused_naming_the_parameter():
    form = ParameterForm(PARAMS)
    form.fields[4].widget.value = "5"
    with pytest.raises(ParameterInputError, match="'cols' takes a list") as info:
        form.values()
    assert info.value.parameter == "cols"
    form.fields[4].widget.value = "['x']"
    form.fields[0].widget.value = None
    with pytest.raises(ParameterInputError, match="'n' needs a int"):
        form.values()


def test_sweep_values_are_typed_per_parameter_and_make_a_grid():
    assert parse_sweep_values("n", "int", "1, 2,3") == [1, 2, 3]
    assert parse_sweep_values("alpha", "float", "1, 0.5") == [1.0, 0.5]
    assert parse_sweep_values("on", "bool", "true, False") == [True, False]
    assert parse_sweep_values("region", "str", "eu, us ,") == ["eu", "us"]
    assert parse_sweep_values("cols", "list", "['a'], [1, 2]") == [["a"], [1, 2]]
    with pytest.raises(ParameterInputError, match="'n' takes a int; '1.5'"):
        parse_sweep_values("n", "int", "1, 1.5")
    form = ParameterForm(PARAMS[:4])
    form.fields[0].sweep.value = "1, 2"
    form.fields[3].sweep.value = "eu, us, asia"
    grid = form.grid()
    assert grid == {"n": [1, 2], "alpha": [0.5], "on": [True], "region": ["eu", "us", "asia"]}
    assert ParameterForm.count(grid) == 6 and form.swept() == ["n", "region"]
