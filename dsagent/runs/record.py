"""``dsagent.record(name, value)``: a named scalar a notebook reports, for the comparison of a sweep's children.

Called inside the kernel. It displays one output with the mime type
``application/vnd.dsagent.record+json`` (and a ``text/plain`` line people can
read in the notebook); capture turns it into a ``record`` event of the run (and
a ``json`` artifact), and ``dsagent batch compare`` reads those events.
scrapbook's ``sb.glue(name, value)`` outputs are read the same way.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["record", "RECORD_MIME", "SCRAPBOOK_MIME", "recorded_value"]

RECORD_MIME = "application/vnd.dsagent.record+json"
SCRAPBOOK_MIME = "application/scrapbook.scrap.json+json"


def _plain(value: Any) -> Any:
    """A JSON value: numpy/pandas scalars become Python numbers; anything else must already be JSON."""
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 0) == 0:
        value = value.item()
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        raise TypeError(f"dsagent.record needs a JSON value (number, text, bool, list, dict), got {type(value).__name__}") from None
    return value


def record(name: str, value: Any) -> None:
    """Report ``value`` under ``name`` from a notebook (shown in a sweep's comparison table)."""
    from IPython.display import display

    if not isinstance(name, str) or not name:
        raise TypeError("dsagent.record needs a non-empty name (a str)")
    value = _plain(value)
    display({RECORD_MIME: {"name": name, "value": value}, "text/plain": f"{name} = {value!r}"}, raw=True)


def recorded_value(data: dict[str, Any]) -> tuple[str, Any] | None:
    """``(name, value)`` if an output's mime bundle is a dsagent record or a scrapbook JSON scrap."""
    for mime in (RECORD_MIME, SCRAPBOOK_MIME):
        item = data.get(mime)
        if isinstance(item, str):
            try:
                item = json.loads(item)
            except ValueError:
                continue
        if isinstance(item, dict) and isinstance(item.get("name"), str):
            return item["name"], item.get("value", item.get("data"))
    return None
