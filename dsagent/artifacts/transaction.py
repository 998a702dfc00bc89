"""Writes inside one ``Store.transaction()``: runs, events, artifacts and where their bytes go.

Only the store creates a ``Transaction`` (``Store.transaction()`` opens the
locked write session at the transaction's first statement, after any bytes
``add_artifacts`` writes first, and commits it); the query modules that write
(``batches``, ``schedules``, ``journal``, ``chats``) are handed one.

Ids are never reused: the ids in use are ``max(id_counters.last_id, highest
id in the table)``. While the file is held read-write a transaction counts
ids (and a run's event seqs) in memory, kept in the connection's
``held_facts``; ``save_held_ids`` writes the counters when the file is let
go, and ``Transaction.con`` (SQL that may delete rows) first raises them to
the highest id in use. See "Fewer statements per cell" in ``docs/architecture.md``.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Iterable, Mapping, Sequence

import duckdb

from dsagent.artifacts import schema
from dsagent.artifacts.blobfiles import BlobFiles, sha256_hex
from dsagent.artifacts.models import Artifact, NewArtifact, Owner, Run, utcnow
from dsagent.artifacts.packs import BlobPacks
from dsagent.artifacts.rows import RUN_COLUMNS, artifact_from_row, naive_utc, run_from_row
from dsagent.errors import DsagentError, NotFound

__all__ = ["Transaction", "save_held_ids"]

#: up to this many rows go in as ``VALUES (?, ...), ...``; more as one list per column, unnested.
#: Measured (CPU per statement, 11-column artifacts rows): 1 row 1.6 ms as VALUES vs 2.5 ms
#: unnested; 10 rows 3.9 ms vs 2.5 ms (each VALUES parameter is bound and planned on its own)
_VALUES_MAX_ROWS = 4


def _values_sql(rows: int, width: int) -> str:
    one = "(" + ", ".join("?" * width) + ")"
    return ", ".join([one] * rows)


class Transaction:
    """Writes inside one ``Store.transaction()``; nothing is visible to others before it commits."""

    def __init__(self, open_con: Callable[[], duckdb.DuckDBPyConnection], *, files: BlobFiles, packs: BlobPacks,
                 inline_max_bytes: int, held_facts: Callable[[], dict[Any, Any] | None] = lambda: None) -> None:
        # The workspace lock is taken only when the first statement needs the file (``open_con``):
        # ``add_artifacts`` hashes, writes and syncs the bytes first, so a transaction that starts
        # with them (a recorded cell's does) spends none of that time holding the lock.
        self._open_con = open_con
        self._opened: duckdb.DuckDBPyConnection | None = None
        self._held_facts_of = held_facts
        self._files = files  # bytes above ``inline_max_bytes``
        self._packs = packs  # the others
        self._inline_max_bytes = inline_max_bytes
        # Facts the connection keeps while this process holds the file read-write (nobody else can
        # write it meanwhile; emptied when it is let go and on rollback), so a cell's transaction
        # asks no questions: run id -> its last event seq (for runs known to exist), and
        # id counter -> the last id handed out (saved to ``id_counters`` by ``save_held_ids``
        # when the file is let go). None (not holding): ask and count in every transaction.
        # Read once the file is open (the lock held), never before: a held file may be let go meanwhile.
        self._held_facts: dict[Any, Any] | None = None
        self._last_seq: dict[int, int] = {}
        self._last_ids: dict[str, int] | None = None
        self._settle: list[Callable[[], None]] = []  # told once the transaction has ended

    def ended(self) -> None:
        """Called by the store once the transaction has committed or rolled back."""
        for settle in self._settle:
            settle()
        self._settle.clear()

    @property
    def _con(self) -> duckdb.DuckDBPyConnection:
        if self._opened is None:
            self._opened = self._open_con()
            self._held_facts = held = self._held_facts_of()
            self._last_seq = {} if held is None else held.setdefault("last_seq", {})
            self._last_ids = None if held is None else held.setdefault("last_ids", {})
        return self._opened

    @property
    def con(self) -> duckdb.DuckDBPyConnection:
        """The connection, for the store's query modules' own SQL.

        That SQL may delete runs or artifacts, so first the id counters are brought up to the
        highest id in use (ids are never reused) and the facts this process remembers are dropped.
        """
        con = self._con
        con.execute(_COUNTERS_UP_TO_USED_IDS)
        if self._held_facts is not None:
            self._held_facts.clear()
            self._last_ids = self._held_facts.setdefault("last_ids", {})
        self._last_seq = {}
        return con

    def _next_ids(self, counter: str, n: int) -> list[int]:
        con = self._con  # opens the file (and reads the held facts) first
        if self._last_ids is None:
            last = con.execute(_TAKE_IDS[counter], [n]).fetchone()[0]
            return list(range(last - n + 1, last + 1))
        last = self._last_ids.get(counter)
        if last is None:
            # the counter may lag behind the ids in use (a holder killed before it saved it, or one that
            # did not need to): the ids in use are up to max(counter, highest id), and deleting rows
            # raises the counter first
            last, stored = con.execute(_LAST_ID_IN_USE[counter]).fetchone()
            assert self._held_facts is not None
            self._held_facts.setdefault("stored_ids", {})[counter] = stored
        self._last_ids[counter] = last + n
        return list(range(last + 1, last + n + 1))

    def create_run(
        self,
        kind: str,
        *,
        status: str = "running",
        title: str | None = None,
        params: Mapping[str, Any] | None = None,
        backend: str | None = None,
        parent_id: int | None = None,
        schedule_id: str | None = None,
    ) -> Run:
        """Insert a run owned by this process (pid, host, start time) and its first ``status`` event."""
        _check_choice("run kind", kind, schema.RUN_KINDS)
        _check_choice("run status", status, schema.RUN_STATUSES)
        (run_id,) = self._next_ids("runs", 1)
        now = naive_utc(utcnow())
        owner = Owner.current()
        self._con.execute(
            f"INSERT INTO runs ({RUN_COLUMNS}, owner_started) VALUES ({', '.join('?' * 15)})",
            [run_id, kind, status, title, json.dumps(dict(params or {}), default=str), backend, parent_id, schedule_id,
             now, now if status == "running" else None, now if status in schema.TERMINAL_STATUSES else None,
             None, owner.pid, owner.host, owner.started],
        )
        self._last_seq[run_id] = 0  # it exists and has no events yet: no need to ask
        self.append_events(run_id, [("status", {"status": status})])
        return run_from_row(self._con.execute(f"SELECT {RUN_COLUMNS} FROM runs WHERE id = ?", [run_id]).fetchone())

    def update_run_status(self, run_id: int, status: str, *, error: str | None = None, only_if: str | None = None) -> Run | None:
        """Set a run's status (and error); ``running`` makes this process its owner. Adds a ``status`` event.

        With ``only_if``, nothing changes (and None is returned) unless the run is in that status now.
        """
        _check_choice("run status", status, schema.RUN_STATUSES)
        now = naive_utc(utcnow())
        owner = Owner.current()
        claim = status == "running"
        row = self._con.execute(
            f"""UPDATE runs SET status = ?, error = coalesce(?, error),
                started = CASE WHEN ? THEN coalesce(started, ?) ELSE started END,
                finished = CASE WHEN ? THEN ? ELSE finished END,
                owner_pid = CASE WHEN ? THEN ? ELSE owner_pid END,
                owner_host = CASE WHEN ? THEN ? ELSE owner_host END,
                owner_started = CASE WHEN ? THEN ? ELSE owner_started END
            WHERE id = ? AND (? IS NULL OR status = ?) RETURNING {RUN_COLUMNS}""",
            [status, error, claim, now, status in schema.TERMINAL_STATUSES, now, claim, owner.pid, claim, owner.host,
             claim, owner.started, run_id, only_if, only_if],
        ).fetchone()
        if row is None:
            if only_if is not None and self._con.execute("SELECT count(*) FROM runs WHERE id = ?", [run_id]).fetchone()[0]:
                return None  # someone else moved it on meanwhile
            raise NotFound(f"no run with id {run_id}", hint="`dsagent runs ls` lists runs", what="run", id=run_id)
        payload: dict[str, Any] = {"status": status}
        if error:
            payload["error"] = error
        self.append_events(run_id, [("status", payload)])
        return run_from_row(row)

    def append_events(self, run_id: int, events: Iterable[tuple[str, Mapping[str, Any]]]) -> list[int]:
        """Append ``(type, payload)`` events; returns their sequence numbers."""
        items = list(events)
        con = self._con  # opens the file (and reads the held facts) first
        last = self._last_seq.get(run_id)
        if last is None:
            exists, last = con.execute(
                "SELECT (SELECT count(*) FROM runs WHERE id = ?), (SELECT coalesce(max(seq), 0) FROM run_events WHERE run_id = ?)",
                [run_id, run_id],
            ).fetchone()
            if not exists:
                raise NotFound(f"no run with id {run_id}", hint="create the run first", what="run", id=run_id)
        self._last_seq[run_id] = last + len(items)
        now = naive_utc(utcnow())
        seqs = list(range(last + 1, last + 1 + len(items)))
        rows = [[run_id, seq, now, kind, json.dumps(dict(payload), default=str)] for seq, (kind, payload) in zip(seqs, items)]
        self._insert("run_events", rows)
        return seqs

    def add_artifacts(self, run_id: int, items: Sequence[NewArtifact]) -> list[Artifact]:
        """Add artifacts with their bytes (stored once per sha256); returns them with ids."""
        for item in items:
            _check_choice("artifact kind", item.kind, schema.ARTIFACT_KINDS)
        hashes = [sha256_hex(item.data) for item in items]
        by_sha = {sha: item.data for sha, item in zip(hashes, items)}
        # before the lock: small bytes go to this process's pack, synced (a rollback leaves orphans gc drops)
        packed = {sha: data for sha, data in by_sha.items() if len(data) <= self._inline_max_bytes}
        places = self._packs.append(packed)
        if places:
            self._settle.append(self._packs.settle)
        con = self._con
        if run_id not in self._last_seq and not con.execute("SELECT count(*) FROM runs WHERE id = ?", [run_id]).fetchone()[0]:
            raise NotFound(f"no run with id {run_id}", hint="create the run first", what="run", id=run_id)
        self._store_blobs(by_sha, places)
        ids = self._next_ids("artifacts", len(items))
        now = naive_utc(utcnow())
        rows = [
            [aid, run_id, item.cell, item.name, item.kind, item.mime, len(item.data), sha, now, list(item.tags),
             json.dumps(dict(item.metadata), default=str)]
            for aid, sha, item in zip(ids, hashes, items)
        ]
        self._insert("artifacts", rows)
        return [artifact_from_row(tuple(r)) for r in rows]

    def _store_blobs(self, by_sha: dict[str, bytes], places: dict[str, tuple[int, int]]) -> None:
        """Rows for bytes the file does not know yet (packed ones are written already; big ones are written here)."""
        if not by_sha:
            return
        # (one anti-joined INSERT instead of this SELECT and an INSERT was measured: 0.2 ms more CPU per cell)
        known = dict(self._con.execute(
            "SELECT sha256, shard IS NULL AND pack IS NULL FROM blobs WHERE sha256 IN ?", [list(by_sha)]
        ).fetchall())
        # a known sha keeps its old place (a record just written to the pack is an orphan gc drops);
        # files are written here, under the lock (gc deletes files no row names)
        for sha, data in by_sha.items():
            if sha in known:
                if known[sha] and not self._files.exists(sha):
                    self._files.write(sha, data)  # its file was lost: the same bytes restore it
            elif sha not in places:
                self._files.write(sha, data)
        now = naive_utc(utcnow())
        self._insert("blobs", [[sha, len(data), None, now, *places.get(sha, (None, None))]
                               for sha, data in by_sha.items() if sha not in known])

    def _insert(self, table: str, rows: list[list[Any]]) -> None:
        """One statement for all ``rows`` (in the table's column order)."""
        if not rows:
            return
        width = len(rows[0])
        if len(rows) <= _VALUES_MAX_ROWS:
            flat = [value for row in rows for value in row]
            self._con.execute(f"INSERT INTO {table} VALUES {_values_sql(len(rows), width)}", flat)
            return
        columns = [list(column) for column in zip(*rows)]
        self._con.execute(f"INSERT INTO {table} SELECT {', '.join(['unnest(?)'] * width)}", columns)


#: the last id in use per counter: the counter, or a higher id in its table (scanning only row groups above the counter)
_LAST_ID_IN_USE = {
    name: f"SELECT greatest(c.last_id, (SELECT coalesce(max(id), 0) FROM {name} WHERE id > c.last_id)), c.last_id FROM id_counters c WHERE c.name = '{name}'"
    for name in ("runs", "artifacts")
}
_TAKE_IDS = {
    name: f"UPDATE id_counters SET last_id = greatest(last_id, (SELECT coalesce(max(id), 0) FROM {name} WHERE id > id_counters.last_id)) + ?"
          f" WHERE name = '{name}' RETURNING last_id"
    for name in ("runs", "artifacts")
}
_COUNTERS_UP_TO_USED_IDS = (
    "UPDATE id_counters SET last_id = greatest(last_id, CASE name"
    " WHEN 'runs' THEN (SELECT coalesce(max(id), 0) FROM runs WHERE id > id_counters.last_id)"
    " WHEN 'artifacts' THEN (SELECT coalesce(max(id), 0) FROM artifacts WHERE id > id_counters.last_id) ELSE 0 END)"
)


#: a counter is written back once the ids handed out run this far ahead of it. Until then the next
#: holder's first allocation finds them with ``max(id) WHERE id > counter``, which zone maps keep to
#: the last row group or two; saving at every release cost an UPDATE per counter per writer turn
SAVE_IDS_AHEAD = 50_000


def save_held_ids(con: duckdb.DuckDBPyConnection, held_facts: dict[Any, Any]) -> None:
    """Write the id counters handed out while the file was held, when far ahead of the stored ones (before it is let go)."""
    stored = held_facts.get("stored_ids") or {}
    for counter, last in (held_facts.get("last_ids") or {}).items():
        if last - stored.get(counter, 0) >= SAVE_IDS_AHEAD:
            con.execute("UPDATE id_counters SET last_id = greatest(last_id, ?) WHERE name = ?", [last, counter])


def _check_choice(what: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise DsagentError(f"unknown {what} {value!r}; known: {', '.join(allowed)}", hint=f"use one of: {', '.join(allowed)}")

