"""Where a sweep's children run, so relative paths resolve as they do for ``dsagent run``.

``dsagent run nb.ipynb`` runs the kernel in the notebook's folder, so
``data_path = "data/sales.csv"`` works. A sweep's children do the same when
every Dask worker can see that folder (a LocalCluster, a shared filesystem):
``workers_see``. Otherwise the notebook's sibling files that it references (a
relative path in a parameter's value, default or swept, or in a string of its
code) are shipped with each child and written into its fresh work dir:
``shipped_files``, bounded by ``batch_ship_max_bytes``: files above the
bound fail the sweep before launch, naming the parameter that references them.
"""

from __future__ import annotations

import ast
import os
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

from dsagent.errors import DsagentError

__all__ = ["workers_see", "shipped_files"]

# quoted strings in code that look like a relative file name ("data/sales.csv", 'model.pkl')
_QUOTED_FILE = re.compile(r"""["']([\w.\-/ ]+\.[A-Za-z0-9]{1,8})["']""")


async def workers_see(client: Any, folder: Path) -> bool:
    """Whether every worker of the cluster has ``folder`` (a LocalCluster's do; a remote one's may not)."""
    try:
        seen = await client.run(os.path.isdir, str(folder))
    except Exception:  # a worker that cannot answer cannot be counted on
        return False
    return bool(seen) and all(seen.values())


def shipped_files(notebook: Path, sets: Sequence[Mapping[str, Any]], max_bytes: int) -> dict[str, bytes]:
    """The files next to ``notebook`` its parameters and code reference, by relative path (see the module docstring)."""
    from dsagent.runs.notebook_input import notebook_parameters, peek_notebook

    folder = notebook.resolve().parent
    wanted: dict[str, str] = {}  # relative path -> what names it (for the error)
    for param in notebook_parameters(notebook):
        values = [_literal(param["default"])] + [s[param["name"]] for s in sets if param["name"] in s]
        for value in values:
            _reference(folder, value, f"parameter {param['name']!r}", wanted)
    for cell in peek_notebook(notebook).get("cells", []):
        if cell.get("cell_type") == "code":
            source = "".join(cell.get("source", ""))
            for name in _QUOTED_FILE.findall(source):
                _reference(folder, name, "the notebook's code", wanted)
    return _read_bounded(folder, wanted, max_bytes)


def _literal(default: str) -> Any:
    try:
        return ast.literal_eval(default)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None


def _reference(folder: Path, value: Any, where: str, wanted: dict[str, str]) -> None:
    """Note ``value`` if it names a file (or folder of files) inside ``folder``; anything else may be an output or no path at all."""
    if not isinstance(value, str) or not value or "://" in value or Path(value).is_absolute() or "\n" in value:
        return
    target = (folder / value).resolve()
    if not target.is_relative_to(folder):
        return  # ../elsewhere: not a sibling; the worker needs it at the same place anyway
    if target.is_file():
        wanted.setdefault(target.relative_to(folder).as_posix(), where)
    elif target.is_dir() and value.strip("./"):
        for inner in sorted(p for p in target.rglob("*") if p.is_file()):
            wanted.setdefault(inner.relative_to(folder).as_posix(), where)


def _read_bounded(folder: Path, wanted: dict[str, str], max_bytes: int) -> dict[str, bytes]:
    total = 0
    for relative, where in wanted.items():
        total += (folder / relative).stat().st_size
        if total > max_bytes:
            raise DsagentError(
                f"the Dask workers cannot see {folder}, and the files {where} references there ({relative} and more) "
                f"exceed batch_ship_max_bytes ({max_bytes} bytes) to send with every child",
                hint="pass an absolute path or a URL the workers can read (shared storage), or raise DSAGENT_BATCH_SHIP_MAX_BYTES",
                reason="too_large", path=relative,
            )
    return {relative: (folder / relative).read_bytes() for relative in wanted}
