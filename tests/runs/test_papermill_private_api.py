"""papermill's private helpers that ``runs/notebook_input.py`` relies on are still there and still behave.

``_infer_parameters`` (papermill.inspection) and ``_resolve_type`` (papermill.cli)
are not public API. pyproject.toml pins papermill to the releases checked here;
when an upgrade moves or changes them, these tests fail and say what to do.
"""

from __future__ import annotations

import importlib
import inspect
from importlib.metadata import requires, version

import nbformat
import pytest
from packaging.requirements import Requirement

WHY = (
    "dsagent/runs/notebook_input.py imports papermill's private {name} ({where}); papermill {installed} {problem}. "
    "Pin papermill to a release that has it (pyproject.toml) or port notebook_input.py to what papermill offers now."
)


def _private(module: str, name: str):
    installed = version("papermill")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        pytest.fail(WHY.format(name=name, where=module, installed=installed, problem=f"no longer has it ({exc})"), pytrace=False)


def test_the_installed_papermill_is_within_the_pinned_range():
    (pin,) = [Requirement(r) for r in requires("dsagent") or [] if Requirement(r).name == "papermill"]
    assert pin.specifier.contains(version("papermill")), f"papermill {version('papermill')} is outside the pin {pin}: reinstall (`make test` does)"
    assert any(spec.operator in ("<", "<=", "~=", "==") for spec in pin.specifier), (
        f"the papermill requirement {pin} has no upper bound: an upgrade could remove the private helpers unnoticed until run time"
    )


def test_infer_parameters_reads_names_types_defaults_and_help():
    infer = _private("papermill.inspection", "_infer_parameters")
    params = inspect.signature(infer).parameters
    if not {"nb", "name", "language"} <= set(params):
        pytest.fail(WHY.format(name="_infer_parameters", where="papermill.inspection", installed=version("papermill"),
                               problem=f"changed its signature to {inspect.signature(infer)}"), pytrace=False)
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("alpha: float = 0.5  # the step\nname = 'x'")
    cell.metadata["tags"] = ["parameters"]
    nb.cells.append(cell)
    nb.metadata["kernelspec"] = {"name": "python3", "language": "python", "display_name": "Python 3"}
    found = {p.name: p for p in infer(nb, name="python3", language="python")}
    assert set(found) == {"alpha", "name"}
    assert (found["alpha"].inferred_type_name, found["alpha"].default, found["alpha"].help) == ("float", "0.5", "the step")
    assert found["name"].default == "'x'"


def test_resolve_type_reads_cli_values_as_papermill_does():
    resolve = _private("papermill.cli", "_resolve_type")
    assert [resolve(v) for v in ("True", "False", "None", "3", "0.5", "text")] == [True, False, None, 3, 0.5, "text"]
