"""SQL of batch sweeps: a batch's children created together, their recorded scalars read in one query.

Part of the store (called inside its locked sessions/transactions through
``Store.create_children``, ``Store.child_records``, ``Store.cancel_children``);
``runs/batch.py`` owns the sweep itself.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import duckdb

from dsagent.artifacts.models import Owner, Run, utcnow
from dsagent.artifacts.rows import RUN_COLUMNS, naive_utc, run_from_row

if TYPE_CHECKING:
    from dsagent.artifacts.transaction import Transaction

_ROWS_PER_INSERT = 200  # DuckDB: multi-row VALUES, far faster than executemany

__all__ = ["create_children", "child_records", "run_records", "cancel_children", "child_status_counts"]


def create_children(tx: "Transaction", parent_id: int, param_sets: Sequence[Mapping[str, Any]], *, title: str | None,
                    backend: str | None) -> list[Run]:
    """One ``queued`` ``batch-child`` run per parameter set, numbered in the title (what ``tx.create_run`` makes for
    each, in a fixed number of statements: a sweep of hundreds of children is created before any of them starts)."""
    if not param_sets:
        return []
    width = len(str(len(param_sets)))
    n = len(param_sets)
    last = tx.con.execute("UPDATE id_counters SET last_id = last_id + ? WHERE name = 'runs' RETURNING last_id", [n]).fetchone()[0]
    ids = list(range(last - n + 1, last + 1))
    now = naive_utc(utcnow())
    owner = Owner.current()
    runs = [[run_id, "batch-child", "queued", f"{title or 'child'} [{i + 1:0{width}d}]", json.dumps(dict(params), default=str), backend,
             parent_id, None, now, None, None, None, owner.pid, owner.host, owner.started]
            for i, (run_id, params) in enumerate(zip(ids, param_sets))]
    events = [[run_id, 1, now, "status", json.dumps({"status": "queued"})] for run_id in ids]
    for start in range(0, n, _ROWS_PER_INSERT):
        chunk = runs[start : start + _ROWS_PER_INSERT]
        tx.con.execute(f"INSERT INTO runs ({RUN_COLUMNS}, owner_started) VALUES {_marks(len(chunk), 15)}", [v for row in chunk for v in row])
        chunk = events[start : start + _ROWS_PER_INSERT]
        tx.con.execute(f"INSERT INTO run_events VALUES {_marks(len(chunk), 5)}", [v for row in chunk for v in row])
    rows = tx.con.execute(f"SELECT {RUN_COLUMNS} FROM runs WHERE id BETWEEN ? AND ? ORDER BY id", [ids[0], ids[-1]]).fetchall()
    return [run_from_row(row) for row in rows]


def _marks(rows: int, width: int) -> str:
    return ", ".join(["(" + ", ".join("?" * width) + ")"] * rows)


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
