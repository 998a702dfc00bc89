"""SQL of batch sweeps: a batch's children created together, their recorded scalars read in one query.

Part of the store (called inside its locked sessions/transactions through
``Store.create_children``, ``Store.child_records``, ``Store.cancel_children``);
``runs/batch.py`` owns the sweep itself.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import duckdb

from dsagent.artifacts.models import Run

if TYPE_CHECKING:
    from dsagent.artifacts.transaction import Transaction

__all__ = ["create_children", "child_records", "run_records", "cancel_children", "child_status_counts"]


def create_children(tx: "Transaction", parent_id: int, param_sets: Sequence[Mapping[str, Any]], *, title: str | None,
                    backend: str | None) -> list[Run]:
    """One ``queued`` ``batch-child`` run per parameter set, numbered in the title."""
    width = len(str(len(param_sets)))
    return [
        tx.create_run("batch-child", status="queued", title=f"{title or 'child'} [{i + 1:0{width}d}]", params=params,
                      backend=backend, parent_id=parent_id)
        for i, params in enumerate(param_sets)
    ]


def child_records(con: duckdb.DuckDBPyConnection, parent_id: int) -> dict[int, dict[str, Any]]:
    """``{child run id: {name: value}}`` of the ``record`` events of a batch's children (the last value of a name wins)."""
    rows = con.execute(
        """SELECT e.run_id, e.payload FROM run_events e JOIN runs r ON r.id = e.run_id
           WHERE r.parent_id = ? AND e.type = 'record' ORDER BY e.run_id, e.seq""",
        [parent_id],
    ).fetchall()
    return _by_run(rows)


def run_records(con: duckdb.DuckDBPyConnection, run_ids: Sequence[int]) -> dict[int, dict[str, Any]]:
    """``{run id: {name: value}}`` of the ``record`` events of any runs (the runs a user compares)."""
    if not run_ids:
        return {}
    marks = ", ".join("?" for _ in run_ids)
    rows = con.execute(
        f"SELECT run_id, payload FROM run_events WHERE run_id IN ({marks}) AND type = 'record' ORDER BY run_id, seq",
        [int(i) for i in run_ids],
    ).fetchall()
    return _by_run(rows)


def _by_run(rows: Sequence[tuple[int, str | None]]) -> dict[int, dict[str, Any]]:
    found: dict[int, dict[str, Any]] = {}
    for run_id, payload in rows:
        data = json.loads(payload) if payload else {}
        if "name" in data:
            found.setdefault(run_id, {})[str(data["name"])] = data.get("value")
    return found


def cancel_children(tx: "Transaction", parent_id: int, error: str) -> list[int]:
    """Mark a batch's children that have not finished ``cancelled``; their ids."""
    ids = [r[0] for r in tx.con.execute(
        "SELECT id FROM runs WHERE parent_id = ? AND status IN ('queued', 'running') ORDER BY id", [parent_id]).fetchall()]
    for run_id in ids:
        tx.update_run_status(run_id, "cancelled", error=error)
    return ids


def child_status_counts(con: duckdb.DuckDBPyConnection, parent_id: int) -> dict[str, int]:
    """``{status: number of children}`` of a batch."""
    rows = con.execute("SELECT status, count(*) FROM runs WHERE parent_id = ? GROUP BY status", [parent_id]).fetchall()
    return {status: int(n) for status, n in rows}
