"""Writes inside one ``Store.transaction()``, and the row <-> model conversions the store shares.

Part of the store (``store.py`` says how transactions are opened and locked);
split out to keep each module readable. Only the store creates a ``Transaction``.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

import duckdb

from dsagent.artifacts import schema
from dsagent.artifacts.blobfiles import sha256_hex
from dsagent.artifacts.models import Artifact, NewArtifact, Owner, Run, utcnow
from dsagent.errors import DsagentError, NotFound

if TYPE_CHECKING:
    from dsagent.artifacts.store import Store

__all__ = ["Transaction"]

_RUN_COLS = "id, kind, status, title, params, backend, parent_id, schedule_id, created, started, finished, error, owner_pid, owner_host"
_ART_COLS = "id, run_id, cell, name, kind, mime, size, sha256, created, tags, metadata"
#: where a blob's bytes are, selected from ``blobs b`` joined to an artifact (read by ``Store.blob_bytes``)
BLOB_WHERE_COLUMNS = "b.shard, b.pack, b.pack_offset, b.sha256 IS NOT NULL"
_ROWS_PER_INSERT = 200  # multi-row VALUES are far faster than executemany in DuckDB


def _naive_utc(value: datetime) -> datetime:
    return value.astimezone(timezone.utc).replace(tzinfo=None) if value.tzinfo else value


def _aware(value: datetime | None) -> datetime | None:
    return value.replace(tzinfo=timezone.utc) if value is not None else None


def _values_sql(rows: int, width: int) -> str:
    one = "(" + ", ".join("?" * width) + ")"
    return ", ".join([one] * rows)


class Transaction:
    """Writes inside one ``Store.transaction()``; nothing is visible to others before it commits."""

    def __init__(self, store: "Store", con: duckdb.DuckDBPyConnection) -> None:
        self.store = store
        self.con = con

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
        now = _naive_utc(utcnow())
        owner = Owner.current()
        self.con.execute(
            f"INSERT INTO runs ({_RUN_COLS}, owner_started) VALUES ({', '.join('?' * 15)})",
            [run_id, kind, status, title, json.dumps(dict(params or {}), default=str), backend, parent_id, schedule_id,
             now, now if status == "running" else None, now if status in schema.TERMINAL_STATUSES else None,
             None, owner.pid, owner.host, owner.started],
        )
        self.append_events(run_id, [("status", {"status": status})])
        return _run(self.con.execute(f"SELECT {_RUN_COLS} FROM runs WHERE id = ?", [run_id]).fetchone())

    def update_run_status(self, run_id: int, status: str, *, error: str | None = None, only_if: str | None = None) -> Run | None:
        """Set a run's status (and error); ``running`` makes this process its owner. Adds a ``status`` event.

        With ``only_if``, nothing changes (and None is returned) unless the run is in that status now.
        """
        _check_choice("run status", status, schema.RUN_STATUSES)
        now = _naive_utc(utcnow())
        owner = Owner.current()
        claim = status == "running"
        row = self.con.execute(
            f"""UPDATE runs SET status = ?, error = coalesce(?, error),
                started = CASE WHEN ? THEN coalesce(started, ?) ELSE started END,
                finished = CASE WHEN ? THEN ? ELSE finished END,
                owner_pid = CASE WHEN ? THEN ? ELSE owner_pid END,
                owner_host = CASE WHEN ? THEN ? ELSE owner_host END,
                owner_started = CASE WHEN ? THEN ? ELSE owner_started END
            WHERE id = ? AND (? IS NULL OR status = ?) RETURNING {_RUN_COLS}""",
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
        return _run(row)

    def append_events(self, run_id: int, events: Iterable[tuple[str, Mapping[str, Any]]]) -> list[int]:
        """Append ``(type, payload)`` events; returns their sequence numbers."""
        items = list(events)
        exists, last = self.con.execute(
            "SELECT (SELECT count(*) FROM runs WHERE id = ?), (SELECT coalesce(max(seq), 0) FROM run_events WHERE run_id = ?)",
            [run_id, run_id],
        ).fetchone()
        if not exists:
            raise NotFound(f"no run with id {run_id}", hint="create the run first", what="run", id=run_id)
        now = _naive_utc(utcnow())
        seqs = list(range(last + 1, last + 1 + len(items)))
        rows = [[run_id, seq, now, kind, json.dumps(dict(payload), default=str)] for seq, (kind, payload) in zip(seqs, items)]
        self._insert("run_events", rows)
        return seqs

    def add_artifacts(self, run_id: int, items: Sequence[NewArtifact]) -> list[Artifact]:
        """Add artifacts with their bytes (stored once per sha256); returns them with ids."""
        if not self.con.execute("SELECT count(*) FROM runs WHERE id = ?", [run_id]).fetchone()[0]:
            raise NotFound(f"no run with id {run_id}", hint="create the run first", what="run", id=run_id)
        for item in items:
            _check_choice("artifact kind", item.kind, schema.ARTIFACT_KINDS)
        hashes = [sha256_hex(item.data) for item in items]
        self._store_blobs({sha: item.data for sha, item in zip(hashes, items)})
        ids = self._next_ids("artifacts", len(items))
        now = _naive_utc(utcnow())
        rows = [
            [aid, run_id, item.cell, item.name, item.kind, item.mime, len(item.data), sha, now, list(item.tags),
             json.dumps(dict(item.metadata), default=str)]
            for aid, sha, item in zip(ids, hashes, items)
        ]
        self._insert("artifacts", rows)
        return [_artifact(tuple(r)) for r in rows]

    def _store_blobs(self, by_sha: dict[str, bytes]) -> None:
        if not by_sha:
            return
        known = dict(self.con.execute(
            "SELECT sha256, shard IS NULL AND pack IS NULL FROM blobs WHERE sha256 IN ?", [list(by_sha)]
        ).fetchall())
        limit = self.store.settings.store_inline_max_bytes
        packed: dict[str, bytes] = {}
        for sha, data in by_sha.items():
            if sha in known:
                if known[sha] and not self.store.blobs.exists(sha):
                    self.store.blobs.write(sha, data)  # its file was lost: the same bytes restore it
            elif len(data) > limit:
                self.store.blobs.write(sha, data)
            else:
                packed[sha] = data
        # durable (one fdatasync) before the commit that references them; orphans if we roll back
        places = self.store.packs.append(packed)
        now = _naive_utc(utcnow())
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


def _run(row: tuple[Any, ...]) -> Run:
    return Run(
        id=row[0], kind=row[1], status=row[2], title=row[3], params=json.loads(row[4]) if row[4] else {},
        backend=row[5], parent_id=row[6], schedule_id=row[7], created=_aware(row[8]), started=_aware(row[9]),
        finished=_aware(row[10]), error=row[11], owner_pid=row[12], owner_host=row[13],
    )


def _artifact(row: tuple[Any, ...]) -> Artifact:
    metadata = row[10]
    return Artifact(
        id=row[0], run_id=row[1], cell=row[2], name=row[3], kind=row[4], mime=row[5], size=row[6], sha256=row[7],
        created=_aware(row[8]), tags=tuple(row[9] or ()), metadata=json.loads(metadata) if isinstance(metadata, str) else dict(metadata or {}),
    )
