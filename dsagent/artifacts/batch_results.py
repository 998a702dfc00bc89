"""SQL of a sweep's group commit: the journals of several batch children written in one transaction.

``Store.apply_journals(writes)`` is ``Store.apply_journal`` for many runs at
once (``runs/batch.py`` hands it the children that finished close together,
and the status changes of the ones it has just submitted). A child's journal
has some fifteen entries (status changes, an event per cell, artifacts); one
``apply_entries`` per child ran ~30 statements for them. Here the whole group
costs a fixed handful: one read of the runs' status and last event number,
one multi-row insert of every event (with the worker's times), one update of
the runs, and one ``add_artifacts`` per child that has any. What ends up in
the database is what ``apply_entries`` writes for each child in turn.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Sequence

from dsagent.artifacts import schema
from dsagent.artifacts.models import NewArtifact, Owner, Run, utcnow
from dsagent.artifacts.rows import RUN_COLUMNS, naive_utc, run_from_row
from dsagent.errors import DsagentError, NotFound

if TYPE_CHECKING:
    from dsagent.artifacts.transaction import Transaction

__all__ = ["apply_journals"]

_ROWS_PER_INSERT = 200  # DuckDB: multi-row VALUES, far faster than executemany


@dataclass
class _RunState:
    """What a group does to one run, gathered before anything is written."""

    status: str
    seq: int  # last event number
    changed: bool = False
    error: str | None = None
    started: datetime | None = None
    finished: datetime | None = None
    claim: bool = False  # became ``running`` here: this process owns it now
    artifacts: list[NewArtifact] = field(default_factory=list)


def apply_journals(tx: "Transaction", writes: Sequence[tuple[int, Sequence[Any]]]) -> dict[int, Run]:
    """Write ``(run_id, journal entries)`` pairs, in order, inside ``tx``; ``{run id: run as it ends up}``.

    Entries are ``RunJournal`` entries. As in ``apply_entries``: a ``running``
    status for a run that is running already adds no second status event; the
    runs' ``started``/``finished`` and the events' times are the entries' own.
    """
    ids = sorted({int(run_id) for run_id, _ in writes})
    if not ids:
        return {}
    states = _current(tx, ids)
    events: list[list[Any]] = []
    for run_id, entries in writes:
        state = states[int(run_id)]
        for kind, first, second, when in entries:
            if kind == "status":
                _status(state, int(run_id), first, second, when, events)
            elif kind == "events":
                for event_type, payload, at in first:
                    state.seq += 1
                    events.append([int(run_id), state.seq, naive_utc(at), event_type, json.dumps(dict(payload), default=str)])
            elif kind == "artifacts":
                state.artifacts.extend(first)
    for start in range(0, len(events), _ROWS_PER_INSERT):
        chunk = events[start : start + _ROWS_PER_INSERT]
        marks = ", ".join(["(?, ?, ?, ?, ?)"] * len(chunk))
        tx.con.execute(f"INSERT INTO run_events VALUES {marks}", [value for row in chunk for value in row])
    _update_runs(tx, states)
    for run_id, state in states.items():
        if state.artifacts:
            tx.add_artifacts(run_id, state.artifacts)
    rows = tx.con.execute(f"SELECT {RUN_COLUMNS} FROM runs WHERE id IN ?", [ids]).fetchall()
    return {row[0]: run_from_row(row) for row in rows}


def _current(tx: "Transaction", ids: list[int]) -> dict[int, _RunState]:
    rows = tx.con.execute(
        """SELECT r.id, r.status, coalesce(max(e.seq), 0) FROM runs r LEFT JOIN run_events e ON e.run_id = r.id
           WHERE r.id IN ? GROUP BY r.id, r.status""", [ids]).fetchall()
    states = {int(rid): _RunState(status, int(seq)) for rid, status, seq in rows}
    missing = [i for i in ids if i not in states]
    if missing:
        raise NotFound(f"no run with id {missing[0]}", hint="create the run first", what="run", id=missing[0])
    return states


def _status(state: _RunState, run_id: int, status: str, error: str | None, when: datetime, events: list[list[Any]]) -> None:
    if status not in schema.RUN_STATUSES:
        raise DsagentError(f"unknown run status {status!r}; known: {', '.join(schema.RUN_STATUSES)}",
                           hint=f"use one of: {', '.join(schema.RUN_STATUSES)}")
    if status == "running":
        state.started = state.started or when
        if state.status == "running":
            return  # the caller marked it running when it submitted it
        state.claim = True
    if status in schema.TERMINAL_STATUSES:
        state.finished = when
    state.status, state.changed = status, True
    state.error = error or state.error
    payload: dict[str, Any] = {"status": status}
    if error:
        payload["error"] = error
    state.seq += 1
    events.append([run_id, state.seq, naive_utc(when), "status", json.dumps(payload)])


def _update_runs(tx: "Transaction", states: dict[int, _RunState]) -> None:
    """One UPDATE for every run whose status or times change (owner: this process, for those it set running)."""
    rows = [(rid, s) for rid, s in states.items() if s.changed or s.started or s.finished]
    if not rows:
        return
    owner = Owner.current()
    now = naive_utc(utcnow())
    values = ", ".join(["(?, ?, ?, ?, ?, ?)"] * len(rows))
    flat: list[Any] = []
    for rid, s in rows:
        flat += [rid, s.status, s.error, naive_utc(s.started) if s.started else None, naive_utc(s.finished) if s.finished else None, s.claim]
    tx.con.execute(
        f"""UPDATE runs SET status = v.status, error = coalesce(v.error, runs.error),
            started = coalesce(v.started, runs.started, CASE WHEN v.claim THEN ?::TIMESTAMP END),
            finished = coalesce(v.finished, runs.finished),
            owner_pid = CASE WHEN v.claim THEN ? ELSE runs.owner_pid END,
            owner_host = CASE WHEN v.claim THEN ? ELSE runs.owner_host END,
            owner_started = CASE WHEN v.claim THEN ? ELSE runs.owner_started END
        FROM (VALUES {values}) v(id, status, error, started, finished, claim) WHERE runs.id = v.id""",
        [now, owner.pid, owner.host, owner.started, *flat],
    )
