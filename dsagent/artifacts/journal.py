"""A run recorded where the workspace cannot be opened (a Dask worker), applied later by the process that can.

``RunJournal`` stands in for a ``Store`` in a ``RunRecorder`` (it has the
writes a recorder makes: status, events, artifacts, transactions) and keeps
them in memory, with the time each happened. The worker sends
``journal.entries`` (plain data, picklable) back; the caller applies them with
``Store.apply_journal(run_id, entries)`` in ONE transaction, keeping the
worker's times for the run's start/end and its events::

    journal = RunJournal(run_id, settings)                      # on the worker
    async with RunRecorder(journal, "batch-child", run_id=run_id) as rec: ...
    return journal.entries
    store.apply_journal(run_id, entries)                        # in the caller

The run itself must exist already (the caller creates it, ``queued``).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Mapping, Sequence

from dsagent.artifacts.models import Artifact, NewArtifact, Run, utcnow
from dsagent.artifacts.blobfiles import sha256_hex
from dsagent.artifacts.rows import RUN_COLUMNS, naive_utc, run_from_row
from dsagent.artifacts.schema import TERMINAL_STATUSES

if TYPE_CHECKING:
    from dsagent.artifacts.transaction import Transaction
    from dsagent.settings import Settings

__all__ = ["RunJournal", "JournalEntry", "apply_entries"]

#: ("status", status, error, time) | ("events", [(type, payload, time)], None, time) | ("artifacts", [NewArtifact], None, time)
JournalEntry = tuple[str, Any, Any, datetime]


class RunJournal:
    """The store-shaped recorder target of one existing run; see the module docstring."""

    #: writes only append to ``entries`` (a recorder calls them inline, not in a worker thread)
    in_memory = True

    def __init__(self, run_id: int, settings: "Settings", *, kind: str = "batch-child", title: str | None = None,
                 params: Mapping[str, Any] | None = None, backend: str | None = None) -> None:
        self.settings = settings
        self.run_id = run_id
        self.entries: list[JournalEntry] = []
        self._run = Run(id=run_id, kind=kind, status="queued", title=title, params=dict(params or {}), backend=backend)
        self._artifact_ids = 0

    def create_run(self, kind: str, **fields: Any) -> Run:
        raise RuntimeError("a RunJournal records an existing run: give the recorder run_id=")

    def update_run_status(self, run_id: int, status: str, *, error: str | None = None) -> Run:
        now = utcnow()
        self.entries.append(("status", status, error, now))
        done = status in TERMINAL_STATUSES
        self._run = replace(self._run, status=status, error=error or self._run.error,
                            started=self._run.started or (now if status == "running" else None), finished=now if done else None)
        return self._run

    def append_events(self, run_id: int, events: Iterable[tuple[str, Mapping[str, Any]]]) -> list[int]:
        now = utcnow()
        items = [(kind, dict(payload), now) for kind, payload in events]
        if items:
            self.entries.append(("events", items, None, now))
        return []

    def add_artifacts(self, run_id: int, items: Sequence[NewArtifact]) -> list[Artifact]:
        now = utcnow()
        self.entries.append(("artifacts", list(items), None, now))
        made = []
        for item in items:
            self._artifact_ids -= 1  # negative: not a workspace id yet
            made.append(Artifact(self._artifact_ids, run_id, item.cell, item.name, item.kind, item.mime, len(item.data),
                                 sha256_hex(item.data), now, tuple(item.tags), dict(item.metadata)))
        return made

    @contextmanager
    def transaction(self) -> Iterator["RunJournal"]:
        yield self  # entries are applied together anyway


def apply_entries(tx: "Transaction", run_id: int, entries: Sequence[JournalEntry]) -> Run:
    """Write a journal's entries for ``run_id`` inside ``tx``; the run as it ends up.

    A ``running`` entry for a run the caller already marked running adds no
    second status event; the run's ``started``/``finished`` and the events'
    times are the worker's.
    """
    run = None
    started: datetime | None = None
    finished: datetime | None = None
    timed: list[tuple[int, datetime]] = []
    current = tx.con.execute("SELECT status FROM runs WHERE id = ?", [run_id]).fetchone()
    status_now = current[0] if current else None
    for kind, first, second, when in entries:
        if kind == "status":
            if first == "running":
                started = started or when
                if status_now == "running":
                    continue
            if first in TERMINAL_STATUSES:
                finished = when
            run = tx.update_run_status(run_id, first, error=second)
            status_now = first
            timed.append((_last_seq(tx, run_id), when))
        elif kind == "events":
            seqs = tx.append_events(run_id, [(t, p) for t, p, _ in first])
            timed.extend(zip(seqs, [w for _, _, w in first]))
        elif kind == "artifacts":
            tx.add_artifacts(run_id, first)
    if timed:
        values = ", ".join("(?, ?)" for _ in timed)
        flat = [v for seq, when in timed for v in (seq, _naive(when))]
        tx.con.execute(f"UPDATE run_events SET time = v.t FROM (VALUES {values}) v(s, t) WHERE run_id = ? AND seq = v.s", [*flat, run_id])
    if started or finished:
        tx.con.execute("UPDATE runs SET started = coalesce(?, started), finished = coalesce(?, finished) WHERE id = ?",
                       [_naive(started) if started else None, _naive(finished) if finished else None, run_id])
    row = tx.con.execute(f"SELECT {RUN_COLUMNS} FROM runs WHERE id = ?", [run_id]).fetchone()
    return run_from_row(row) if row else run  # type: ignore[return-value]


def _last_seq(tx: "Transaction", run_id: int) -> int:
    return int(tx.con.execute("SELECT max(seq) FROM run_events WHERE run_id = ?", [run_id]).fetchone()[0])


def _naive(value: datetime) -> datetime:
    return naive_utc(value)
