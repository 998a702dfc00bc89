"""Read queries the dashboard needs beyond the store's plain listings.

Filtered, sorted and counted pages of runs (a table with a pager needs the
total), artifact pages with more filters (mime, date range, kind excluded),
the overview's counts, and an artifact's metadata with its bytes in one lock
turn. Part of the store (the only code that runs SQL); ``Store`` exposes each
through a small method.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from dsagent.artifacts.models import Artifact, Event, Owner, Page, Run
from dsagent.artifacts.rows import ARTIFACT_COLUMNS, BLOB_WHERE_COLUMNS, RUN_COLUMNS, artifact_from_row, aware_utc, naive_utc, run_from_row
from dsagent.errors import DsagentError, NotFound

if TYPE_CHECKING:
    from dsagent.artifacts.store import Store

__all__ = ["RunTablePage", "RUN_SORT_COLUMNS", "listing_filters", "search_runs", "search_artifacts", "overview_counts", "read_artifact", "run_owner",
           "EventOutline", "event_outline"]

#: columns a runs table may be sorted by (anything else is refused, never spliced into SQL)
RUN_SORT_COLUMNS = ("id", "kind", "status", "title", "created", "started", "finished", "duration", "backend", "parent_id")


@dataclass(frozen=True)
class RunTablePage:
    """One page of a filtered, sorted runs table and how many runs match in all."""

    items: list[Run]
    total: int
    offset: int
    limit: int


def _run_filters(kind: str | None, status: str | None, text: str | None, since: datetime | None,
                 until: datetime | None, parent_id: int | None) -> tuple[str, list[Any]]:
    return _where([
        ("kind = ?", kind or None),
        ("status = ?", status or None),
        ("contains(lower(coalesce(title, '')), lower(?))", text or None),
        ("created >= ?", naive_utc(since) if since is not None else None),
        ("created < ?", naive_utc(until) if until is not None else None),
        ("parent_id = ?", parent_id),
    ])


def listing_filters(**given: Any) -> tuple[str, list[Any]]:
    """The WHERE clause of ``Store.list_runs``/``list_artifacts`` for the filters given (None: no filter), and its parameters."""
    conditions: list[tuple[str, Any]] = []
    for key, value in given.items():
        if key == "cursor" and value is not None:
            try:
                value = int(value)
            except ValueError:
                raise DsagentError(f"invalid cursor {value!r}", hint="pass the next_cursor of a previous page") from None
            conditions.append(("id < ?", value))
        elif key == "since":
            conditions.append(("created >= ?", naive_utc(value) if value is not None else None))
        elif key == "name":
            conditions.append(("name GLOB ?" if value and any(c in value for c in "*?[") else "contains(name, ?)", value))
        else:
            conditions.append((f"{key} = ?", value))
    return _where(conditions)


def _where(conditions: list[tuple[str, Any]]) -> tuple[str, list[Any]]:
    """A WHERE clause of the conditions whose value is not None (each clause has one ``?``), and its parameters."""
    given = [(clause, value) for clause, value in conditions if value is not None]
    return ("WHERE " + " AND ".join(c for c, _ in given)) if given else "", [v for _, v in given]


def search_runs(store: "Store", *, kind: str | None = None, status: str | None = None, text: str | None = None,
                since: datetime | None = None, until: datetime | None = None, parent_id: int | None = None,
                sort: str = "id", descending: bool = True, offset: int = 0, limit: int = 50) -> RunTablePage:
    """Runs matching the filters, sorted, one page from ``offset`` (a table's pager), with the total."""
    if sort not in RUN_SORT_COLUMNS:
        raise DsagentError(f"cannot sort runs by {sort!r}", hint=f"sort by one of: {', '.join(RUN_SORT_COLUMNS)}", parameter="sort")
    if offset < 0 or not 1 <= limit <= 1000:
        raise DsagentError("offset must be >= 0 and limit 1..1000", hint="page through with offset += limit", parameter="limit")
    where, params = _run_filters(kind, status, text, since, until, parent_id)
    key = "(finished - started)" if sort == "duration" else sort
    order = f"{key} {'DESC' if descending else 'ASC'} NULLS LAST, id DESC"
    with store.session(write=False) as con:
        total = con.execute(f"SELECT count(*) FROM runs {where}", params).fetchone()[0]
        rows = con.execute(f"SELECT {RUN_COLUMNS} FROM runs {where} ORDER BY {order} LIMIT ? OFFSET ?", [*params, limit, offset]).fetchall()
    return RunTablePage([run_from_row(r) for r in rows], int(total), offset, limit)


def search_artifacts(store: "Store", *, run_id: int | None = None, kind: str | None = None, exclude_kind: str | None = None,
                     mime: str | None = None, name: str | None = None, since: datetime | None = None,
                     until: datetime | None = None, limit: int = 50, cursor: str | None = None) -> Page[Artifact]:
    """Newest first, keyset pages on id; ``name`` is a glob with ``*``/``?``, else a substring; ``mime`` a prefix."""
    if cursor is not None:
        try:
            before = int(cursor)
        except ValueError:
            raise DsagentError(f"invalid cursor {cursor!r}", hint="pass the next_cursor of a previous page", parameter="cursor") from None
    if not 1 <= limit <= 1000:
        raise DsagentError("limit must be 1..1000", hint="page through with the cursor", parameter="limit")
    glob = bool(name) and any(c in name for c in "*?[")
    where, params = _where([
        ("run_id = ?", run_id),
        ("kind = ?", kind),
        ("kind <> ?", exclude_kind or None),
        ("starts_with(mime, ?)", mime or None),
        ("name GLOB ?" if glob else "contains(name, ?)", name or None),
        ("created >= ?", naive_utc(since) if since is not None else None),
        ("created < ?", naive_utc(until) if until is not None else None),
        ("id < ?", before if cursor is not None else None),
    ])
    with store.session(write=False) as con:
        rows = con.execute(f"SELECT {ARTIFACT_COLUMNS} FROM artifacts {where} ORDER BY id DESC LIMIT ?", [*params, limit]).fetchall()
    items = [artifact_from_row(r) for r in rows]
    return Page(items, str(items[-1].id) if len(items) == limit else None)


def overview_counts(store: "Store") -> dict[str, Any]:
    """Runs per status and per kind, artifacts per kind, the running runs (at most 20)."""
    with store.session(write=False) as con:
        by_status = dict(con.execute("SELECT status, count(*) FROM runs GROUP BY status").fetchall())
        by_kind = dict(con.execute("SELECT kind, count(*) FROM runs GROUP BY kind").fetchall())
        artifacts = dict(con.execute("SELECT kind, count(*) FROM artifacts GROUP BY kind").fetchall())
        running = con.execute(f"SELECT {RUN_COLUMNS} FROM runs WHERE status = 'running' ORDER BY id DESC LIMIT 20").fetchall()
    return {"runs_by_status": by_status, "runs_by_kind": by_kind, "artifacts_by_kind": artifacts, "running": [run_from_row(r) for r in running]}


def read_artifact(store: "Store", artifact_id: int) -> tuple[Artifact, bytes]:
    """An artifact's metadata and exact bytes, read in one lock turn (what a download route serves)."""
    with store.session(write=False) as con:
        row = con.execute(
            f"SELECT {', '.join('a.' + c.strip() for c in ARTIFACT_COLUMNS.split(','))}, {BLOB_WHERE_COLUMNS} "
            "FROM artifacts a LEFT JOIN blobs b ON a.sha256 = b.sha256 WHERE a.id = ?",
            [artifact_id],
        ).fetchone()
        if row is None:
            raise NotFound(f"no artifact with id {artifact_id}", hint="`dsagent artifacts ls` lists artifacts", what="artifact", id=artifact_id)
        artifact = artifact_from_row(row[:11])
        return artifact, store.blob_bytes(con, artifact_id, artifact.sha256, row[11:])


def run_owner(store: "Store", run_id: int) -> Owner | None:
    """The ``Owner`` (pid, host, process start time) recorded for a run, or None if it has none."""
    with store.session(write=False) as con:
        row = con.execute("SELECT owner_pid, owner_host, owner_started FROM runs WHERE id = ?", [run_id]).fetchone()
    if row is None:
        raise NotFound(f"no run with id {run_id}", hint="`dsagent runs ls` lists runs", what="run", id=run_id)
    return Owner(row[0], row[1], row[2]) if row[0] is not None else None


@dataclass(frozen=True)
class EventOutline:
    """What a run's page needs to show one window of a long event list: how many events there are (seqs count
    1, 2, 3 ... per run, so the newest seq is also the count) and the events a person took from the dashboard."""

    last_seq: int  # 0: no events yet
    actions: list[Event]  # events whose payload says ``"via": "dashboard"`` and names a ``"user"``, oldest first


def event_outline(store: "Store", run_id: int, action_limit: int = 50) -> EventOutline:
    """A run's newest event seq and its dashboard actions (launched, cancel asked ...), without reading every event."""
    with store.session(write=False) as con:
        last = con.execute("SELECT coalesce(max(seq), 0) FROM run_events WHERE run_id = ?", [run_id]).fetchone()[0]
        rows = con.execute(
            "SELECT run_id, seq, time, type, payload FROM run_events WHERE run_id = ? AND payload->>'via' = 'dashboard' "
            "AND payload->>'user' IS NOT NULL ORDER BY seq LIMIT ?", [run_id, action_limit]).fetchall()
    return EventOutline(int(last), [Event(r[0], r[1], aware_utc(r[2]), r[3], json.loads(r[4]) if r[4] else {}) for r in rows])
