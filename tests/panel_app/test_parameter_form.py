"""The parameter form's fields per type, its checks as a box is typed, and its typed reading (widgets, no server)."""

from __future__ import annotations

import panel_material_ui as pmui
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


def test_one_field_per_type_with_defaults_and_help():
    form = ParameterForm(PARAMS)
    kinds = [type(w) for w in form.widgets()]
    # text boxes, not Material UI's number inputs: those put back the last good number when "three" is typed
    assert kinds == [pmui.TextInput, pmui.TextInput, pmui.Checkbox, pmui.TextInput, pmui.TextInput, pmui.TextInput, pmui.TextInput]
    assert form.widgets()[0].helper_text == "how many" and form.widgets()[0].value == "3"
    assert form.widgets()[6].value == "" and "default: pd.Timestamp" in form.widgets()[6].placeholder
    # an expression default is not passed: the notebook's own value applies
    assert form.values() == {"n": 3, "alpha": 0.5, "on": True, "region": "eu", "cols": ["a", "b"], "opts": {"k": 1}}
    assert form.values(changed_only=True) == {}
    form.fields[0].widget.value_input = "4"
    assert form.values(changed_only=True) == {"n": 4}
    assert ParameterForm(PARAMS, sweep=False).sweep_widgets() == []


@pytest.mark.parametrize(("index", "typed", "said"), [
    (0, "three", "'three' is not a whole number: type one, e.g. 3"),
    (0, "3.7", "'3.7' is not a whole number: type one, e.g. 3"),
    (0, "", "empty: type a whole number, e.g. 3"),
    (1, "half", "'half' is not a number: type one, e.g. 0.5"),
    (4, "5", "'5' is not a Python list: type one, e.g. ['a', 'b']"),
    (5, "[1]", "'[1]' is not a Python dict: type one, e.g. {'k': 1}"),
])
def test_a_wrong_value_is_said_under_its_box_as_it_is_typed(index, typed, said):
    form = ParameterForm(PARAMS)
    box = form.fields[index].widget
    box.value_input = typed  # what the browser sends at each key
    assert box.error_state and box.helper_text == said
    assert form.problems == {form.fields[index].name: said} and not form.valid
    with pytest.raises(ParameterInputError, match=f"parameter '{form.fields[index].name}'"):
        form.values()
    box.value_input = form.fields[index].default_text  # put right: the box and the form are right again
    assert not box.error_state and form.problems == {} and form.valid
    assert box.helper_text == (PARAMS[index]["help"] or f"default: {PARAMS[index]['default']}")


def test_wrong_types_are_refused_naming_the_parameter():
    form = ParameterForm(PARAMS)
    form.fields[4].widget.value = "5"
    with pytest.raises(ParameterInputError, match="'cols' takes a list") as info:
        form.values()
    assert info.value.parameter == "cols"
    form.fields[4].widget.value = "['x']"
    form.fields[0].widget.value = ""
    with pytest.raises(ParameterInputError, match="'n' needs an int value"):
        form.values()


def test_stored_values_fill_the_boxes():
    form = ParameterForm(PARAMS)
    unknown = form.set_values({"n": 7, "on": False, "region": "us", "cols": ["z"], "alpha": "0.25", "gone": 1})
    assert unknown == ["gone"]  # a parameter the notebook no longer has
    assert form.values() == {"n": 7, "alpha": 0.25, "on": False, "region": "us", "cols": ["z"], "opts": {"k": 1}}


def test_sweep_values_are_typed_per_parameter_and_make_a_grid():
    assert parse_sweep_values("n", "int", "1, 2,3") == [1, 2, 3]
    assert parse_sweep_values("alpha", "float", "1, 0.5") == [1.0, 0.5]
    assert parse_sweep_values("on", "bool", "true, False") == [True, False]
    assert parse_sweep_values("region", "str", "eu, us ,") == ["eu", "us"]
    assert parse_sweep_values("cols", "list", "['a'], [1, 2]") == [["a"], [1, 2]]
    with pytest.raises(ParameterInputError, match="'n' takes an int; '1.5'"):
        parse_sweep_values("n", "int", "1, 1.5")
    form = ParameterForm(PARAMS[:4])
    form.fields[0].sweep.value = "1, 2"
    form.fields[3].sweep.value = "eu, us, asia"
    grid = form.grid()
    assert grid == {"n": [1, 2], "alpha": [0.5], "on": [True], "region": ["eu", "us", "asia"]}
    assert ParameterForm.count(grid) == 6 and form.swept() == ["n", "region"]
    form.fields[0].sweep.value_input = "1, x"  # a sweep box is checked as typed too
    assert form.fields[0].sweep.error_state and form.problems == {"n: sweep values": "'x' is not a whole number: type one, e.g. 1, 2, 3"}
