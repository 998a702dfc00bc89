"""The workspace database: runs, their events and artifacts in one DuckDB file.

This is the only module that executes SQL. Use it like this::

    with Store.open(workspace) as store:            # creates/upgrades the file, reaps dead runs
        run = store.create_run("exec", title="plot")
        with store.transaction() as tx:              # one transaction per cell
            tx.append_events(run.id, [("cell_finished", {"cell": 0})])
            tx.add_artifacts(run.id, [NewArtifact("plot.png", "image", "image/png", png)])
        store.update_run_status(run.id, "succeeded")
        page = store.list_artifacts(run_id=run.id, limit=50)   # then cursor=page.next_cursor

Many processes share one workspace. DuckDB lets one process hold a file
read-write and refuses every other open meanwhile (it fails at once, it does
not wait), so no process keeps the file open: each operation takes the
workspace's file lock (``dsagent.duckdb.lock``, taken in turns, see
``turns.py``; waiting up to ``store_lock_timeout`` seconds, then
``StoreLocked``), attaches the file to a
long-lived in-memory DuckDB instance, runs one transaction, and detaches.
Attaching costs ~1-2 ms where opening a new DuckDB instance costs ~20 ms
(DuckDB builds its catalog of built-in functions per instance), which is why
the instance outlives the attachment. Readers take the same lock, because a
read-only open also fails while another process writes.

Bytes are content-addressed by sha256 and stored once; up to
``store_inline_max_bytes`` they are appended to pack files under
``<workspace>/blobs/packs/`` (one fdatasync per transaction, before the
commit; ``packs.py`` says why), larger ones go to ``<workspace>/blobs/ab/cdef...``.
Workspaces written before v4 of the schema also have bytes in a second
DuckDB file (``blobstore.py``), which is still read. Callers never see the
difference. This module, ``blobstore.py`` and ``compact.py`` (gc's file
rewrite) and ``transaction.py`` (the writes inside one transaction) are the
only code that runs SQL.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Mapping, Sequence

import duckdb

from dsagent.artifacts import schema
from dsagent.artifacts.blobfiles import BlobFiles
from dsagent.artifacts.blobstore import InlineBlobs
from dsagent.artifacts.chats import ChatTable
from dsagent.artifacts.packs import BlobPacks
from dsagent.artifacts.models import Artifact, Event, GcReport, NewArtifact, Owner, Page, Run
from dsagent.artifacts.transaction import _ART_COLS, _RUN_COLS, BLOB_WHERE_COLUMNS, Transaction, _artifact, _aware, _naive_utc, _run
from dsagent.artifacts.turns import LockTimeout, TurnLock
from dsagent.errors import DsagentError, NotFound, SchemaTooNew, StorageFull, StoreCorrupt, StoreLocked
from dsagent.settings import Settings
from dsagent.workspace import Workspace

if TYPE_CHECKING:
    from dsagent.artifacts.run_queries import RunTablePage

__all__ = ["Store", "Transaction", "LockStats"]

log = logging.getLogger(__name__)

ALIAS = "ws"
_DUCKDB_MAGIC = b"DUCK"
CHECKPOINT_THRESHOLD = "16KB"


@dataclass
class LockStats:
    """How long this Store waited for its turn at the file (what sharing costs)."""

    acquisitions: int = 0
    waits: int = 0  # acquisitions that waited more than 1 ms
    wait_seconds: float = 0.0
    max_wait_seconds: float = 0.0
    hold_seconds: float = 0.0  # time spent holding the lock (attach, work, detach)


class Store:
    """Runs, events and artifacts of one workspace; see the module docstring for a tour."""

    def __init__(self, workspace: Workspace | None = None, settings: Settings | None = None) -> None:
        self.settings = settings or Settings()
        self.workspace = workspace or Workspace.from_settings(self.settings)
        self.path: Path = self.workspace.db_path
        self.blobs = BlobFiles(self.workspace.blobs_dir)
        self.inline = InlineBlobs(self)
        self.chats = ChatTable(self)  # named conversations (chats.py)
        self.inline = InlineBlobs(self)  # bytes written before schema v4
        self.packs = BlobPacks(self.workspace.blobs_dir / "packs")
        self.lock_stats = LockStats()
        self._file_lock = TurnLock(str(self.path) + ".lock")
        self._thread_lock = threading.RLock()
        self._con: duckdb.DuckDBPyConnection | None = None

    @classmethod
    @contextmanager
    def open(cls, workspace: Workspace | None = None, settings: Settings | None = None) -> Iterator["Store"]:
        """A ready store: the file is created or upgraded, runs of dead processes marked failed."""
        store = cls(workspace, settings)
        try:
            store.setup()
            yield store
        finally:
            store.close()

    def close(self) -> None:
        with self._thread_lock:
            if self._con is not None:
                self._con.close()
                self._con = None

    # -- set-up ----------------------------------------------------------------

    def setup(self) -> None:
        """Create or upgrade the database and mark runs of vanished processes failed (idempotent)."""
        self.workspace.ensure()
        self._refuse_foreign_file()
        with self._session(write=True) as con:
            found = self._schema_version(con)
            if found > schema.SCHEMA_VERSION:
                raise SchemaTooNew(
                    f"{self.path} has schema version {found}; this dsagent understands up to {schema.SCHEMA_VERSION}",
                    hint="upgrade dsagent (pip install -U dsagent), or point DSAGENT_HOME at another workspace",
                    path=str(self.path),
                    found=found,
                    supported=schema.SCHEMA_VERSION,
                )
            if found < schema.SCHEMA_VERSION:
                self._migrate(con, found)
        self.reap_dead_runs()

    def _refuse_foreign_file(self) -> None:
        if not self.path.exists():
            return
        try:
            with open(self.path, "rb") as handle:
                header = handle.read(12)
        except OSError as exc:
            raise StoreCorrupt(f"cannot read {self.path}: {exc.strerror}", hint="check its permissions", path=str(self.path)) from exc
        if header[8:12] != _DUCKDB_MAGIC:
            raise self._corrupt("it is not a DuckDB database")

    def _corrupt(self, why: str, path: Path | None = None) -> StoreCorrupt:
        path = path or self.path
        return StoreCorrupt(
            f"{path} cannot be used as the workspace database: {why}; it was left untouched",
            hint="move the file away (or set DSAGENT_HOME to another folder) and run again",
            path=str(path),
        )

    @staticmethod
    def _schema_version(con: duckdb.DuckDBPyConnection) -> int:
        exists = con.execute(
            "SELECT count(*) FROM duckdb_tables() WHERE database_name = ? AND table_name = 'schema_version'", [ALIAS]
        ).fetchone()
        if not exists or not exists[0]:
            return 0
        row = con.execute("SELECT max(version) FROM schema_version").fetchone()
        return int(row[0] or 0) if row else 0

    @staticmethod
    def _migrate(con: duckdb.DuckDBPyConnection, found: int, alias: str = ALIAS) -> None:
        con.execute("BEGIN")
        try:
            for step in schema.MIGRATIONS[found:]:
                for statement in step:
                    con.execute(statement.format(db=alias))
            con.execute(f"DELETE FROM {alias}.schema_version")
            con.execute(f"INSERT INTO {alias}.schema_version VALUES (?)", [schema.SCHEMA_VERSION])
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise

    # -- access: lock, attach, run, detach ------------------------------------

    def _connection(self) -> duckdb.DuckDBPyConnection:
        if self._con is None:
            con = duckdb.connect(":memory:")
            # Measured (bench/artifacts.py): a checkpoint at every detach
            # rewrites the open row groups each time, so writes got slower as
            # tables grew (80 ms per cell after 1,800 cells). Instead a commit
            # checkpoints once the log passes a small bound; every attach
            # replays the log, and its cost grows with the number of entries,
            # hence a small bound (16 KB: listing ~4 ms, a cell's write ~20 ms).
            con.execute("SET checkpoint_on_detach = 'DISABLED'")
            con.execute(f"SET checkpoint_threshold = '{CHECKPOINT_THRESHOLD}'")
            self._con = con
        return self._con

    @contextmanager
    def _session(self, *, write: bool) -> Iterator[duckdb.DuckDBPyConnection]:
        """The file attached as the current database, for one unit of work, under the file lock."""
        with self._thread_lock:
            self._acquire_file_lock()
            held_from = time.perf_counter()
            try:
                con = self._connection()
                self._attach(con, read_only=not write)
                try:
                    yield con
                except duckdb.Error as exc:
                    translated = self._translate(exc)
                    if translated is exc:
                        raise
                    raise translated from exc
                finally:
                    self.inline.detach(con)
                    self._detach(con)
            finally:
                self._file_lock.release()
                self.lock_stats.hold_seconds += time.perf_counter() - held_from

    def _acquire_file_lock(self) -> None:
        timeout = self.settings.store_lock_timeout
        try:
            waited = self._file_lock.acquire(timeout)
        except LockTimeout:
            raise StoreLocked(
                f"the workspace database {self.path} stayed busy for {timeout:g} s",
                hint="another dsagent process holds it for long (a gc?); try again, or raise DSAGENT_STORE_LOCK_TIMEOUT",
                path=str(self.path),
                timeout=timeout,
            ) from None
        stats = self.lock_stats
        stats.acquisitions += 1
        stats.wait_seconds += waited
        stats.max_wait_seconds = max(stats.max_wait_seconds, waited)
        stats.waits += waited > 0.001

    def _attach(self, con: duckdb.DuckDBPyConnection, *, read_only: bool, path: Path | None = None, alias: str = ALIAS) -> None:
        target = str(path or self.path).replace("'", "''")
        mode = " (READ_ONLY)" if read_only else ""
        deadline = time.monotonic() + self.settings.store_lock_timeout
        while True:
            try:
                con.execute(f"ATTACH '{target}' AS {alias}{mode}")
                break
            except duckdb.IOException as exc:
                # a process outside dsagent (say the duckdb CLI) holds the file: wait for it too
                if "lock" in str(exc).lower() and time.monotonic() < deadline:
                    time.sleep(0.05)
                    continue
                if "lock" in str(exc).lower():
                    raise StoreLocked(
                        f"another program keeps {self.path} open: {exc}",
                        hint="close the program named in the message (e.g. a duckdb shell) and run again",
                        path=str(self.path),
                        timeout=self.settings.store_lock_timeout,
                    ) from None
                raise self._corrupt(str(exc), path) from exc
            except duckdb.Error as exc:
                raise self._corrupt(str(exc), path) from exc
        if alias == ALIAS:
            con.execute(f"USE {alias}")

    def _detach(self, con: duckdb.DuckDBPyConnection, alias: str = ALIAS) -> None:
        if self._con is None:
            return  # dropped after an earlier failure: nothing is attached any more
        try:
            if alias == ALIAS:
                con.execute("USE memory")
            con.execute(f"DETACH {alias}")
        except duckdb.Error:
            # a failed detach (full disk during the checkpoint, a fatal error) leaves
            # the instance unusable: drop it so the next operation starts clean
            log.warning("detaching %s failed; reopening DuckDB", self.path, exc_info=True)
            con.close()
            self._con = None

    def _translate(self, exc: duckdb.Error) -> DsagentError | duckdb.Error:
        text = str(exc)
        if "No space left" in text or "disk is full" in text.lower():
            return StorageFull(
                f"the disk is full: cannot write {self.path}: {text}",
                hint="free disk space (or run `dsagent gc --older-than 30d`) and run again; earlier data is intact",
                path=str(self.path),
            )
        if "not a valid DuckDB database" in text or "orrupt" in text or "checksum" in text.lower():
            return self._corrupt(text)
        return exc

    @contextmanager
    def transaction(self) -> Iterator["Transaction"]:
        """One atomic write: everything done through the yielded object commits together or not at all."""
        with self._session(write=True) as con:
            con.execute("BEGIN")
            try:
                yield Transaction(self, con)
                con.execute("COMMIT")
            except BaseException:
                try:
                    con.execute("ROLLBACK")
                except duckdb.Error:
                    pass  # the transaction is gone already (a fatal error)
                raise

    # -- writes (each in its own transaction) -----------------------------------

    def create_run(self, kind: str, **fields: Any) -> Run:
        """A new run (status ``running`` unless given); see ``Transaction.create_run``."""
        with self.transaction() as tx:
            return tx.create_run(kind, **fields)

    def update_run_status(self, run_id: int, status: str, *, error: str | None = None) -> Run:
        with self.transaction() as tx:
            return tx.update_run_status(run_id, status, error=error)

    def append_events(self, run_id: int, events: Iterable[tuple[str, Mapping[str, Any]]]) -> list[int]:
        with self.transaction() as tx:
            return tx.append_events(run_id, events)

    def add_artifacts(self, run_id: int, items: Sequence[NewArtifact]) -> list[Artifact]:
        with self.transaction() as tx:
            return tx.add_artifacts(run_id, items)

    def reap_dead_runs(self) -> list[int]:
        """Mark ``running`` runs (and a batch's ``queued`` children) whose owner process (on this host) is gone as failed; their ids.

        Other ``queued`` runs wait for no process: a closed chat is ``queued`` until someone opens it again.
        """
        with self._session(write=False) as con:
            rows = con.execute(
                "SELECT id, owner_pid, owner_host, owner_started, status FROM runs "
                "WHERE status = 'running' OR (status = 'queued' AND kind = 'batch-child')").fetchall()
        dead = [(rid, pid, host, status) for rid, pid, host, started, status in rows
                if pid is not None and Owner(pid, host, started).is_gone()]
        if not dead:
            return []
        with self.transaction() as tx:
            for rid, pid, host, status in dead:
                reason = f"the process that ran it (pid {pid} on {host}) ended without finishing it"
                tx.update_run_status(rid, "failed", error=reason, only_if=status)
        return [rid for rid, _, _, _ in dead]

    # -- reads ----------------------------------------------------------------

    def get_run(self, run_id: int) -> Run:
        with self._session(write=False) as con:
            row = con.execute(f"SELECT {_RUN_COLS} FROM runs WHERE id = ?", [run_id]).fetchone()
        if row is None:
            raise NotFound(f"no run with id {run_id}", hint="`dsagent runs ls` lists runs", what="run", id=run_id)
        return _run(row)

    def list_runs(
        self,
        *,
        kind: str | None = None,
        status: str | None = None,
        parent_id: int | None = None,
        since: datetime | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Page[Run]:
        """Newest first, ``limit`` per page; keyset pagination on id (no OFFSET)."""
        where, params = _filters(kind=kind, status=status, parent_id=parent_id, since=since, cursor=cursor)
        sql = f"SELECT {_RUN_COLS} FROM runs {where} ORDER BY id DESC LIMIT ?"
        with self._session(write=False) as con:
            rows = con.execute(sql, [*params, limit]).fetchall()
        runs = [_run(r) for r in rows]
        return Page(runs, str(runs[-1].id) if len(runs) == limit else None)

    def events(self, run_id: int, *, after: int = 0, limit: int | None = None) -> list[Event]:
        """Events of a run with ``seq > after``, oldest first (follow a run by passing the last seq)."""
        sql = "SELECT run_id, seq, time, type, payload FROM run_events WHERE run_id = ? AND seq > ? ORDER BY seq"
        params: list[Any] = [run_id, after]
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        with self._session(write=False) as con:
            rows = con.execute(sql, params).fetchall()
        return [Event(r[0], r[1], _aware(r[2]), r[3], json.loads(r[4]) if r[4] else {}) for r in rows]

    def follow_events(self, run_id: int, *, after: int = 0, poll: float = 0.5) -> Iterator[Event]:
        """Yield events as they are written until the run has finished and all are read."""
        while True:
            done = self.get_run(run_id).done  # read before the events, so none is missed
            batch = self.events(run_id, after=after)
            yield from batch
            after = batch[-1].seq if batch else after
            if done and not batch:
                return
            if not batch:
                time.sleep(poll)

    def get_artifact(self, artifact_id: int) -> Artifact:
        with self._session(write=False) as con:
            row = con.execute(f"SELECT {_ART_COLS} FROM artifacts WHERE id = ?", [artifact_id]).fetchone()
        if row is None:
            raise NotFound(f"no artifact with id {artifact_id}", hint="`dsagent artifacts ls` lists artifacts", what="artifact", id=artifact_id)
        return _artifact(row)

    def read_bytes(self, artifact_id: int) -> bytes:
        """The exact bytes of an artifact, wherever they are kept."""
        with self._session(write=False) as con:
            row = con.execute(f"SELECT a.sha256, {BLOB_WHERE_COLUMNS} FROM artifacts a LEFT JOIN blobs b ON a.sha256 = b.sha256 WHERE a.id = ?",
                              [artifact_id]).fetchone()
            if row is None:
                raise NotFound(f"no artifact with id {artifact_id}", hint="`dsagent artifacts ls` lists artifacts", what="artifact", id=artifact_id)
            return self.blob_bytes(con, artifact_id, row[0], row[1:])

    def blob_bytes(self, con: duckdb.DuckDBPyConnection, artifact_id: int, sha: str, where: Sequence[Any]) -> bytes:
        """An artifact's bytes from ``where`` (the ``BLOB_WHERE_COLUMNS`` of its blob row); call inside a session."""
        shard, pack, offset, known = where
        if not known:
            raise self._corrupt(f"artifact {artifact_id} references bytes {sha[:12]}... which are missing")
        if pack is not None:
            return self.packs.read(pack, offset, sha)  # under the lock: gc cannot move it meanwhile
        if shard is not None:
            data = self.inline.read(con, sha, shard)
            if data is None:
                raise self._corrupt(f"artifact {artifact_id} references bytes {sha[:12]}... which are missing")
            return data
        return self.blobs.read(sha)

    def list_artifacts(
        self,
        *,
        run_id: int | None = None,
        kind: str | None = None,
        name: str | None = None,
        since: datetime | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Page[Artifact]:
        """Newest first; ``name`` is a glob when it has ``*``/``?``, else a substring."""
        where, params = _filters(run_id=run_id, kind=kind, name=name, since=since, cursor=cursor)
        sql = f"SELECT {_ART_COLS} FROM artifacts {where} ORDER BY id DESC LIMIT ?"
        with self._session(write=False) as con:
            rows = con.execute(sql, [*params, limit]).fetchall()
        items = [_artifact(r) for r in rows]
        return Page(items, str(items[-1].id) if len(items) == limit else None)

    def artifact_count(self, run_id: int) -> int:
        """How many artifacts a run has."""
        with self._session(write=False) as con:
            return con.execute("SELECT count(*) FROM artifacts WHERE run_id = ?", [run_id]).fetchone()[0]

    def counts(self) -> dict[str, int]:
        """Row counts per table (for status displays and tests)."""
        with self._session(write=False) as con:
            return {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ("runs", "run_events", "artifacts", "blobs")}

    # -- batch sweeps and journals (SQL in batches.py / journal.py) ---------------

    def apply_journal(self, run_id: int, entries: Sequence[Any]) -> Run:
        """Write what a ``RunJournal`` recorded elsewhere (a Dask worker) for ``run_id``, in one transaction."""
        from dsagent.artifacts.journal import apply_entries

        with self.transaction() as tx:
            return apply_entries(tx, run_id, entries)

    def create_children(self, parent_id: int, param_sets: Sequence[Mapping[str, Any]], *, title: str | None = None,
                        backend: str | None = None) -> list[Run]:
        """One ``queued`` ``batch-child`` run per parameter set under ``parent_id``, in one transaction."""
        from dsagent.artifacts import batches

        with self.transaction() as tx:
            return batches.create_children(tx, parent_id, param_sets, title=title, backend=backend)

    def child_records(self, parent_id: int) -> dict[int, dict[str, Any]]:
        """Scalars the children of a batch recorded (``dsagent.record``): ``{run id: {name: value}}``."""
        from dsagent.artifacts import batches

        with self._session(write=False) as con:
            return batches.child_records(con, parent_id)

    def cancel_children(self, parent_id: int, error: str) -> list[int]:
        """Mark a batch's queued/running children cancelled; their ids."""
        from dsagent.artifacts import batches

        with self.transaction() as tx:
            return batches.cancel_children(tx, parent_id, error)

    # -- schedules (SQL in schedules.py) ---------------------------------------------

    def add_schedule(self, schedule: Any) -> Any:
        from dsagent.artifacts import schedules

        with self.transaction() as tx:
            return schedules.add_schedule(tx, schedule)

    def update_schedule(self, name: str, **changes: Any) -> Any:
        from dsagent.artifacts import schedules

        with self.transaction() as tx:
            return schedules.update_schedule(tx, name, changes)

    def delete_schedule(self, name: str) -> None:
        from dsagent.artifacts import schedules

        with self.transaction() as tx:
            schedules.delete_schedule(tx, name)

    def get_schedule(self, name: str) -> Any:
        from dsagent.artifacts import schedules

        with self._session(write=False) as con:
            return schedules.get_schedule(con, name)

    def list_schedules(self, *, limit: int = 50, cursor: str | None = None) -> Page[Any]:
        """Schedules by name, ``limit`` per page."""
        from dsagent.artifacts import schedules

        with self._session(write=False) as con:
            items = schedules.list_schedules(con, limit, cursor)
        return Page(items, items[-1].name if len(items) == limit else None)

    def claim_firing(self, name: str, version: int, expected: datetime | None, next_fire: datetime | None, *,
                     fired: datetime | None = None, pending: bool | None = None) -> bool:
        """Compare-and-set of a schedule's ``next_fire`` (see ``schedules.claim_firing``)."""
        from dsagent.artifacts import schedules

        with self.transaction() as tx:
            return schedules.claim_firing(tx, name, version, expected, next_fire, fired=fired, pending=pending)

    def take_pending_firing(self, name: str, version: int) -> bool:
        from dsagent.artifacts import schedules

        with self.transaction() as tx:
            return schedules.take_pending(tx, name, version)

    def set_schedule_last_run(self, name: str, run_id: int) -> None:
        from dsagent.artifacts import schedules

        with self.transaction() as tx:
            schedules.set_last_run(tx, name, run_id)

    def active_schedule_runs(self, name: str) -> list[int]:
        from dsagent.artifacts import schedules

        with self._session(write=False) as con:
            return schedules.active_runs(con, name)

    def acquire_scheduler_lease(self, owner: str, now: datetime, ttl: float) -> Any:
        """Take or renew the lease that makes one process the one that fires schedules; returns the holder."""
        from dsagent.artifacts import schedules

        with self.transaction() as tx:
            return schedules.acquire_lease(tx, owner, now, ttl)

    def release_scheduler_lease(self, owner: str) -> None:
        from dsagent.artifacts import schedules

        with self.transaction() as tx:
            schedules.release_lease(tx, owner)

    def scheduler_lease(self) -> Any:
        """Who fires the schedules now (``SchedulerLease``), or None."""
        from dsagent.artifacts import schedules

        with self._session(write=False) as con:
            return schedules.get_lease(con)
    # -- dashboard queries (SQL in run_queries.py) ---------------------------------

    def search_runs(self, **filters: Any) -> "RunTablePage":
        """A filtered, sorted page of runs with the total (see ``run_queries.search_runs``)."""
        from dsagent.artifacts import run_queries

        return run_queries.search_runs(self, **filters)

    def search_artifacts(self, **filters: Any) -> Page[Artifact]:
        """Keyset pages of artifacts with mime/date/excluded-kind filters (see ``run_queries``)."""
        from dsagent.artifacts import run_queries

        return run_queries.search_artifacts(self, **filters)

    def overview(self) -> dict[str, Any]:
        """Runs per status and kind, artifacts per kind, the running runs."""
        from dsagent.artifacts import run_queries

        return run_queries.overview_counts(self)

    def read_artifact(self, artifact_id: int) -> tuple[Artifact, bytes]:
        """An artifact's metadata and exact bytes in one lock turn."""
        from dsagent.artifacts import run_queries

        return run_queries.read_artifact(self, artifact_id)

    def run_owner(self, run_id: int) -> "Owner | None":
        """The process recorded as running a run (pid, host, start time), or None."""
        from dsagent.artifacts import run_queries

        return run_queries.run_owner(self, run_id)

    def child_status_counts(self, parent_id: int) -> dict[str, int]:
        """How many children of a batch are in each status (one query, for its live progress)."""
        from dsagent.artifacts import batches

        with self._session(write=False) as con:
            return batches.child_status_counts(con, parent_id)

    # -- retention --------------------------------------------------------------

    def gc(self, older_than: timedelta, *, dry_run: bool = False) -> GcReport:
        """Delete finished runs older than ``older_than`` with their events, artifacts and unshared bytes.

        Then both database files are rewritten (DuckDB reuses freed blocks but
        never returns them to the OS), so the disk space really comes back.
        """
        from dsagent.artifacts import compact

        return compact.collect_garbage(self, older_than, dry_run=dry_run)

    @contextmanager
    def _locked_file(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """The file lock and the DuckDB instance, with nothing attached (for whole-file work)."""
        with self._thread_lock:
            self._acquire_file_lock()
            try:
                yield self._connection()
            finally:
                self._file_lock.release()


def _filters(**given: Any) -> tuple[str, list[Any]]:
    """A WHERE clause for the filters that were given (None means: no filter)."""
    clauses: list[str] = []
    params: list[Any] = []
    for key, value in given.items():
        if value is None:
            continue
        if key == "cursor":
            try:
                params.append(int(value))
            except ValueError:
                raise DsagentError(f"invalid cursor {value!r}", hint="pass the next_cursor of a previous page") from None
            clauses.append("id < ?")
        elif key == "since":
            clauses.append("created >= ?")
            params.append(_naive_utc(value))
        elif key == "name":
            clauses.append("name GLOB ?" if any(c in value for c in "*?[") else "contains(name, ?)")
            params.append(value)
        else:
            clauses.append(f"{key} = ?")
            params.append(value)
    return ("WHERE " + " AND ".join(clauses)) if clauses else "", params
