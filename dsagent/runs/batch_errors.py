"""A failed sweep's error in one line: how many children failed, the most common child error and what to do about it."""

from __future__ import annotations

import re
from collections import Counter
from typing import TYPE_CHECKING, Iterable, Mapping

if TYPE_CHECKING:
    from dsagent.artifacts.models import Run

__all__ = ["batch_error"]

# "cell 3 (In [2]) raised: FileNotFoundError: [Errno 2] ..." -> ("cell 3", "FileNotFoundError")
_CELL_ERROR = re.compile(r"^(cell \d+)\b[^:]*:\s*([\w.]+)")
_HINTS = {
    "FileNotFoundError": "a relative path resolves in the notebook's folder when the Dask workers can see it, else only the files the "
                         "notebook references are sent along (batch_ship_max_bytes); pass an absolute path or a URL the workers can read",
    "ModuleNotFoundError": "install the package where the kernels run (the Dask workers' environment), or drop it from the notebook",
    "ImportError": "install the package where the kernels run (the Dask workers' environment), or drop it from the notebook",
    "MemoryError": "run fewer children per worker (DSAGENT_BATCH_THREADS_PER_WORKER) or give the kernels more memory",
    "KilledWorker": "a Dask worker died: see its log; children that need much memory want fewer per worker (DSAGENT_BATCH_THREADS_PER_WORKER)",
}
_DEFAULT_HINT = "open a failed child's page (or `dsagent runs show ID`) for its traceback"


def batch_error(children: Iterable["Run"], counts: Mapping[str, int], total: int) -> str:
    """``2 of 2 children did not succeed (2 failed); most common error (2 children): cell 2 raised: ...; hint: ...``."""
    failed = total - counts.get("succeeded", 0)
    summary = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    errors = [c.error for c in children if c.status == "failed" and c.error]
    head = f"{failed} of {total} children did not succeed ({summary})"
    if not errors:
        return head
    keys = [_key(e) for e in errors]
    key, count = Counter(keys).most_common(1)[0]
    example = errors[keys.index(key)]
    ename = key[1] if "KilledWorker" not in example else "KilledWorker"
    return f"{head}; most common error ({count} {'child' if count == 1 else 'children'}): {example[:300]}; hint: {_HINTS.get(ename, _DEFAULT_HINT)}"


def _key(error: str) -> tuple[str, str]:
    found = _CELL_ERROR.match(error)
    return (found.group(1), found.group(2).rsplit(".", 1)[-1]) if found else ("", error[:80])
