"""Check what a notebook run is given before anything starts: the file, its parameters, the output path.

Two stages, so a cold ``dsagent run`` can start its kernel while papermill
(and nbformat, ~1.5 s of imports) loads: ``peek_notebook`` and
``check_output_path`` use only the stdlib and run first; ``prepare_notebook``
loads the notebook with papermill (old nbformat versions are upgraded), checks
the parameters against the ``parameters`` cell and injects them as papermill
does. Every problem is a ``NotebookError`` raised before a run is created.
"""

from __future__ import annotations

import ast
import copy
import hashlib
import json
import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from dsagent.errors import NotebookError

if TYPE_CHECKING:
    from nbformat import NotebookNode

__all__ = ["peek_notebook", "check_output_path", "prepare_notebook", "PreparedNotebook", "notebook_parameters", "expected_type",
           "unknown_parameters_error"]

log = logging.getLogger(__name__)

#: type names papermill reports (annotation or type comment) that we can check a value against
_CHECKS: dict[str, tuple[type, ...]] = {
    "int": (int,),
    "float": (int, float),
    "bool": (bool,),
    "str": (str,),
    "list": (list, tuple),
    "tuple": (list, tuple),
    "dict": (dict,),
}


def peek_notebook(path: str | Path) -> dict[str, Any]:
    """The notebook's JSON as a dict; ``NotebookError`` if the file is missing or is not a notebook."""
    path = Path(path)
    if not path.is_file():
        raise NotebookError(
            f"no notebook at {path}" + (" (it is a folder)" if path.is_dir() else ""),
            hint="check the path (dsagent run NOTEBOOK.ipynb)", path=str(path), reason="not_found",
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _not_a_notebook(path, f"it is not JSON ({exc})") from None
    except OSError as exc:
        raise NotebookError(f"cannot read {path}: {exc.strerror}", hint="check its permissions", path=str(path), reason="not_found") from None
    if not isinstance(data, dict) or "nbformat" not in data or not ("cells" in data or "worksheets" in data):
        raise _not_a_notebook(path, "it is JSON but has no 'nbformat' and 'cells'")
    return data


def _not_a_notebook(path: Path, why: str) -> NotebookError:
    return NotebookError(
        f"{path} is not a Jupyter notebook: {why}",
        hint="pass an .ipynb file saved by Jupyter (nbformat 3 or 4)", path=str(path), reason="not_a_notebook",
    )


def check_output_path(output: str | Path | None) -> Path | None:
    """The output path, resolved; ``NotebookError`` if its folder is missing or it is a folder."""
    if output is None:
        return None
    path = Path(output).expanduser()
    if path.is_dir():
        raise NotebookError(f"the output path {path} is a folder", hint="name a file, e.g. -o out.ipynb", path=str(path), reason="bad_output")
    if not path.parent.is_dir():
        raise NotebookError(
            f"cannot write the output notebook {path}: the folder {path.parent} does not exist",
            hint=f"create it first (mkdir -p {path.parent}) or pick another -o path", path=str(path), reason="bad_output",
        )
    return path.resolve()


@dataclass
class PreparedNotebook:
    """A loaded, parameterized notebook ready for the engine, and the parameters it got."""

    nb: "NotebookNode"
    parameters: dict[str, Any]
    warnings: list[str] = field(default_factory=list)


def prepare_notebook(
    path: str | Path,
    kernel_name: str,
    parameters: Mapping[str, Any] | None = None,
    text_parameters: Mapping[str, str] | None = None,
    raw_parameters: Mapping[str, str] | None = None,
    allow_unknown: bool = False,
) -> PreparedNotebook:
    """Load ``path`` with papermill, check and inject the parameters (papermill's injected cell).

    A name the ``parameters`` cell does not declare is a ``NotebookError`` (a typo would otherwise
    run the notebook on its default, silently); ``allow_unknown`` injects it anyway, as papermill does.

    ``parameters`` are Python values; ``text_parameters`` come from ``-p NAME
    VALUE`` and are read as papermill reads them (``0.5`` a float, ``True`` a
    bool), except that a parameter declared ``str`` keeps its text;
    ``raw_parameters`` (``-r``) stay strings.
    """
    from papermill.cli import _resolve_type
    from papermill.execute import prepare_notebook_metadata, remove_error_markers
    from papermill.inspection import _infer_parameters
    from papermill.parameterize import parameterize_notebook

    try:
        nb = _load(Path(path))
    except Exception as exc:  # nbformat raises several unrelated types for unreadable files
        raise _not_a_notebook(Path(path), f"nbformat cannot read it ({type(exc).__name__}: {exc})") from None
    declared = {p.name: p for p in _infer_parameters(nb, name=kernel_name, language="python")}
    given: dict[str, Any] = dict(parameters or {})
    for name, text in (text_parameters or {}).items():
        given[name] = text if expected_type(declared.get(name)) == "str" else _resolve_type(text)
    given.update(raw_parameters or {})
    unknown = [name for name in given if name not in declared]
    if unknown and not allow_unknown:
        raise unknown_parameters_error(Path(path), unknown, list(declared))
    warnings = [f"the notebook has no parameter {name!r} (it is injected anyway, as papermill does)" for name in unknown]
    for warning in warnings:
        log.warning("%s", warning)
    for name, value in given.items():
        _check_type(Path(path), name, value, declared.get(name))
    if given:
        nb = parameterize_notebook(nb, given, kernel_name=kernel_name, language="python", engine_name="dsagent")
    nb = remove_error_markers(prepare_notebook_metadata(nb, str(path), None))
    return PreparedNotebook(nb, given, warnings)


def unknown_parameters_error(path: Path, unknown: list[str], declared: list[str]) -> NotebookError:
    """``notebook.ipynb has no parameter 'regoin' (did you mean 'region'?); its parameters: region, top_n``."""
    import difflib

    guesses = [f"{name!r} (did you mean {close[0]!r}?)" if (close := difflib.get_close_matches(name, declared, n=1)) else repr(name)
               for name in unknown]
    listed = ", ".join(declared) if declared else "none (no cell is tagged 'parameters')"
    return NotebookError(
        f"{path.name} has no parameter {', '.join(guesses)}; its parameters: {listed}",
        hint="fix the name (`dsagent inspect NOTEBOOK` lists them), or pass --allow-unknown-parameters (allow_unknown_parameters=True) "
             "to inject it anyway as papermill does",
        path=str(path), reason="unknown_parameter", parameters=unknown,
    )


_LOADED: "OrderedDict[str, NotebookNode]" = OrderedDict()  # sha256 of a notebook file -> papermill's loaded node
_LOADED_MAX = 8


def _load(path: Path) -> "NotebookNode":
    """papermill's ``load_notebook_node``, once per content: a sweep prepares one notebook per parameter set (the
    caller's checks, then every child on its worker), and reading + validating it with nbformat each time cost more
    than injecting the parameters. A copy, so callers may change it."""
    from papermill.iorw import load_notebook_node

    key = hashlib.sha256(path.read_bytes()).hexdigest()
    loaded = _LOADED.get(key)
    if loaded is None:
        loaded = _LOADED[key] = load_notebook_node(str(path))
        while len(_LOADED) > _LOADED_MAX:
            _LOADED.popitem(last=False)
    return copy.deepcopy(loaded)


def expected_type(param: Any) -> str | None:
    """The type a declared parameter takes: its annotation, else the type of its literal default."""
    if param is None:
        return None
    if param.inferred_type_name in _CHECKS:
        return str(param.inferred_type_name)
    try:
        default = ast.literal_eval(param.default)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None  # an expression (e.g. a function call): nothing to check against
    name = type(default).__name__
    return name if name in _CHECKS else None


def _check_type(path: Path, name: str, value: Any, param: Any) -> None:
    expected = expected_type(param)
    if expected is None or value is None:
        return
    allowed = _CHECKS[expected]
    if isinstance(value, allowed) and not (isinstance(value, bool) and bool not in allowed):
        return
    raise NotebookError(
        f"parameter {name!r} of {path.name} takes a {expected} (default {param.default}), got {type(value).__name__} {value!r}",
        hint=f"pass a {expected} value, e.g. -p {name} {param.default}", path=str(path), reason="bad_parameter",
        parameter=name, expected=expected,
    )


def notebook_parameters(path: str | Path) -> list[dict[str, Any]]:
    """The notebook's parameters as papermill infers them: name, type, default, help."""
    from papermill.inspection import inspect_notebook

    data = peek_notebook(path)
    if not (data.get("metadata") or {}).get("kernelspec"):
        # papermill needs a kernel name only to pick the (Python) translator
        from papermill.inspection import _infer_parameters
        from papermill.iorw import load_notebook_node

        found = {p.name: p._asdict() for p in _infer_parameters(load_notebook_node(str(path)), name="python3", language="python")}
    else:
        found = inspect_notebook(str(path))
    rows = []
    for param in found.values():
        declared = param["inferred_type_name"]
        rows.append({
            "name": param["name"],
            "type": declared if declared not in ("None", None) else (_literal_type(param["default"]) or "any"),
            "default": param["default"],
            "help": param["help"],
        })
    return rows


def _literal_type(default: str) -> str | None:
    try:
        return type(ast.literal_eval(default)).__name__
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None
