"""Writes inside one ``Store.transaction()``: runs, events, artifacts and where their bytes go.

Only the store creates a ``Transaction`` (``Store.transaction()`` opens the
locked write session and commits it); the query modules that write
(``batches``, ``schedules``, ``journal``, ``chats``) are handed one.
"""

from __future__ import annotations

import json
from typing import Any, Iterable, Mapping, Sequence

import duckdb

from dsagent.artifacts import schema
from dsagent.artifacts.blobfiles import BlobFiles, sha256_hex
from dsagent.artifacts.models import Artifact, NewArtifact, Owner, Run, utcnow
from dsagent.artifacts.packs import BlobPacks
from dsagent.artifacts.rows import RUN_COLUMNS, artifact_from_row, naive_utc, run_from_row
from dsagent.errors import DsagentError, NotFound

__all__ = ["Transaction"]

_ROWS_PER_INSERT = 200  # multi-row VALUES are far faster than executemany in DuckDB


def _values_sql(rows: int, width: int) -> str:
    one = "(" + ", ".join("?" * width) + ")"
    return ", ".join([one] * rows)


class Transaction:
    """Writes inside one ``Store.transaction()``; nothing is visible to others before it commits."""

    def __init__(self, con: duckdb.DuckDBPyConnection, *, files: BlobFiles, packs: BlobPacks, inline_max_bytes: int) -> None:
        self.con = con
        self._files = files  # bytes above ``inline_max_bytes``
        self._packs = packs  # the others
        self._inline_max_bytes = inline_max_bytes
        self._runs_seen: set[int] = set()  # runs known to exist in this transaction (one query less per cell)

    def _next_ids(self, counter: str, n: int) -> list[int]:
        last = self.con.execute("UPDATE id_counters SET last_id = last_id + ? WHERE name = ? RETURNING last_id", [n, counter]).fetchone()[0]
        return list(range(last - n + 1, last + 1))

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
        self.con.execute(
            f"INSERT INTO runs ({RUN_COLUMNS}, owner_started) VALUES ({', '.join('?' * 15)})",
            [run_id, kind, status, title, json.dumps(dict(params or {}), default=str), backend, parent_id, schedule_id,
             now, now if status == "running" else None, now if status in schema.TERMINAL_STATUSES else None,
             None, owner.pid, owner.host, owner.started],
        )
        self.append_events(run_id, [("status", {"status": status})])
        return run_from_row(self.con.execute(f"SELECT {RUN_COLUMNS} FROM runs WHERE id = ?", [run_id]).fetchone())

    def update_run_status(self, run_id: int, status: str, *, error: str | None = None, only_if: str | None = None) -> Run | None:
        """Set a run's status (and error); ``running`` makes this process its owner. Adds a ``status`` event.

        With ``only_if``, nothing changes (and None is returned) unless the run is in that status now.
        """
        _check_choice("run status", status, schema.RUN_STATUSES)
        now = naive_utc(utcnow())
        owner = Owner.current()
        claim = status == "running"
        row = self.con.execute(
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
            if only_if is not None and self.con.execute("SELECT count(*) FROM runs WHERE id = ?", [run_id]).fetchone()[0]:
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
        exists, last = self.con.execute(
            "SELECT (SELECT count(*) FROM runs WHERE id = ?), (SELECT coalesce(max(seq), 0) FROM run_events WHERE run_id = ?)",
            [run_id, run_id],
        ).fetchone()
        if not exists:
            raise NotFound(f"no run with id {run_id}", hint="create the run first", what="run", id=run_id)
        self._runs_seen.add(run_id)
        now = naive_utc(utcnow())
        seqs = list(range(last + 1, last + 1 + len(items)))
        rows = [[run_id, seq, now, kind, json.dumps(dict(payload), default=str)] for seq, (kind, payload) in zip(seqs, items)]
        self._insert("run_events", rows)
        return seqs

    def add_artifacts(self, run_id: int, items: Sequence[NewArtifact]) -> list[Artifact]:
        """Add artifacts with their bytes (stored once per sha256); returns them with ids."""
        if run_id not in self._runs_seen and not self.con.execute("SELECT count(*) FROM runs WHERE id = ?", [run_id]).fetchone()[0]:
            raise NotFound(f"no run with id {run_id}", hint="create the run first", what="run", id=run_id)
        for item in items:
            _check_choice("artifact kind", item.kind, schema.ARTIFACT_KINDS)
        hashes = [sha256_hex(item.data) for item in items]
        self._store_blobs({sha: item.data for sha, item in zip(hashes, items)})
        ids = self._next_ids("artifacts", len(items))
        now = naive_utc(utcnow())
        rows = [
            [aid, run_id, item.cell, item.name, item.kind, item.mime, len(item.data), sha, now, list(item.tags),
             json.dumps(dict(item.metadata), default=str)]
            for aid, sha, item in zip(ids, hashes, items)
        ]
        self._insert("artifacts", rows)
        return [artifact_from_row(tuple(r)) for r in rows]

    def _store_blobs(self, by_sha: dict[str, bytes]) -> None:
        if not by_sha:
            return
        known = dict(self.con.execute(
            "SELECT sha256, shard IS NULL AND pack IS NULL FROM blobs WHERE sha256 IN ?", [list(by_sha)]
        ).fetchall())
        limit = self._inline_max_bytes
        packed: dict[str, bytes] = {}
        for sha, data in by_sha.items():
            if sha in known:
                if known[sha] and not self._files.exists(sha):
                    self._files.write(sha, data)  # its file was lost: the same bytes restore it
            elif len(data) > limit:
                self._files.write(sha, data)
            else:
                packed[sha] = data
        # durable (one fdatasync) before the commit that references them; orphans if we roll back
        places = self._packs.append(packed)
        now = naive_utc(utcnow())
        self._insert("blobs", [[sha, len(data), None, now, *places.get(sha, (None, None))]
                               for sha, data in by_sha.items() if sha not in known])

    def _insert(self, table: str, rows: list[list[Any]]) -> None:
        for start in range(0, len(rows), _ROWS_PER_INSERT):
            chunk = rows[start : start + _ROWS_PER_INSERT]
            flat = [value for row in chunk for value in row]
            self.con.execute(f"INSERT INTO {table} VALUES {_values_sql(len(chunk), len(chunk[0]))}", flat)


def _check_choice(what: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise DsagentError(f"unknown {what} {value!r}; known: {', '.join(allowed)}", hint=f"use one of: {', '.join(allowed)}")

