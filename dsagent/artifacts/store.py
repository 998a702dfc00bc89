"""The workspace database: runs, their events and artifacts in one DuckDB file.

Use it like this::

    with Store.open(workspace) as store:            # creates/upgrades the file, reaps dead runs
        run = store.create_run("exec", title="plot")
        with store.transaction() as tx:              # one transaction per cell
            tx.append_events(run.id, [("cell_finished", {"cell": 0})])
            tx.add_artifacts(run.id, [NewArtifact("plot.png", "image", "image/png", png)])
        store.update_run_status(run.id, "succeeded")
        page = store.list_artifacts(run_id=run.id, limit=50)   # then cursor=page.next_cursor

``Store`` is the facade over the store's modules, which import one way
(``tests/artifacts/test_layering.py`` checks it)::

    store.py -> compact, run_queries, batches, batch_results, schedules, journal, chats, blobstore, upgrade
             -> transaction -> rows, packs, blobfiles, models, schema
             -> connection (the locked DuckDB file) -> turns

``connection.py`` says how processes share the file (one lock; the file is
attached per unit of work and held between them while no one else waits). Bytes are content-addressed by sha256 and stored once; up to
``store_inline_max_bytes`` they are appended to pack files under
``<workspace>/blobs/packs/`` (one fdatasync per transaction, before the
commit; ``packs.py`` says why), larger ones go to ``<workspace>/blobs/ab/cdef...``.
Workspaces written before v4 of the schema also have bytes in a second
DuckDB file (``blobstore.py``), which is still read. Callers never see the
difference. Only the modules of this package run SQL.
"""

from __future__ import annotations

import contextlib
import functools
import json
import time
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import duckdb

from dsagent.artifacts import batch_results, batches, compact, schedules, schema, upgrade
from dsagent.artifacts.blobfiles import BlobFiles
from dsagent.artifacts.blobstore import InlineBlobs
from dsagent.artifacts.chats import ChatTable
from dsagent.artifacts.connection import Database, LockStats
from dsagent.artifacts.journal import apply_entries
from dsagent.artifacts.models import Artifact, Event, GcReport, NewArtifact, Owner, Page, Run
from dsagent.artifacts.packs import BlobPacks
from dsagent.artifacts.rows import ARTIFACT_COLUMNS, BLOB_WHERE_COLUMNS, RUN_COLUMNS, artifact_from_row, aware_utc, run_from_row
from dsagent.artifacts.run_queries import EventOutline, RunTablePage, listing_filters
from dsagent.artifacts.transaction import Transaction, save_held_ids
from dsagent.errors import NotFound, SchemaTooNew
from dsagent.settings import Settings
from dsagent.workspace import Workspace

__all__ = ["Store", "Transaction", "LockStats"]


class Store:
    """Runs, events and artifacts of one workspace; see the module docstring for a tour."""

    def __init__(self, workspace: Workspace | None = None, settings: Settings | None = None) -> None:
        self.settings = settings or Settings()
        self.workspace = workspace or Workspace.from_settings(self.settings)
        self.path: Path = self.workspace.db_path
        self.db = Database(self.path, self.settings.store_lock_timeout, self.settings.store_hold_seconds)  # the locked connection
        # a partial over the dict, not a lambda over the store: no Store <-> Database cycle
        # (a cycle keeps the DuckDB connection alive until interpreter exit)
        self.db.before_release(functools.partial(save_held_ids, held_facts=self.db.held_facts))
        self.blobs = BlobFiles(self.workspace.blobs_dir)
        self.packs = BlobPacks(self.workspace.blobs_dir / "packs")
        self.inline = InlineBlobs(self.db)  # bytes written before schema v4
        self.chats = ChatTable(self)  # named conversations (chats.py)

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
        self.db.close()
        self.packs.close()

    @property
    def lock_stats(self) -> LockStats:
        """How long this store waited for and held the workspace lock."""
        return self.db.stats

    def setup(self) -> None:
        """Create or upgrade the database and mark runs of vanished processes failed (idempotent)."""
        self.workspace.ensure()
        self.db.refuse_foreign_file()
        with self.session(write=True) as con:
            found = upgrade.installed_version(con)
            if found > schema.SCHEMA_VERSION:
                raise SchemaTooNew(
                    f"{self.path} has schema version {found}; this dsagent understands up to {schema.SCHEMA_VERSION}",
                    hint="upgrade dsagent (pip install -U dsagent), or point DSAGENT_HOME at another workspace",
                    path=str(self.path),
                    found=found,
                    supported=schema.SCHEMA_VERSION,
                )
            if found < schema.SCHEMA_VERSION:
                upgrade.upgrade(con, found)
        self.reap_dead_runs()

    # -- access (connection.py holds the lock and the file) ----------------------

    @contextmanager
    def session(self, *, write: bool) -> Iterator[duckdb.DuckDBPyConnection]:
        """The workspace file attached as the current database, under the workspace lock, for one unit of work.

        For the store's own query modules; everything else uses the methods below.
        """
        with self.db.session(write=write) as con:
            yield con


    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """One atomic write: everything done through the yielded object commits together or not at all."""
        # the lock is taken (and BEGIN sent) when the transaction's first statement needs the file, so
        # bytes it adds first are written and synced before it waits for its turn (``Transaction``)
        stack = contextlib.ExitStack()
        db = self.db
        tx = Transaction(lambda: stack.enter_context(db.transaction()), files=self.blobs, packs=self.packs,
                         inline_max_bytes=self.settings.store_inline_max_bytes,
                         # facts (a run's last seq, the last ids handed out) carry over between transactions
                         # only while the file stays held; without holding, every transaction asks the file
                         held_facts=lambda: db.held_facts if db.hold_seconds > 0 else None)
        try:
            with stack:
                stack.enter_context(db.coming())  # a held file waits for this transaction's first statement
                yield tx
        finally:
            tx.ended()

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

        Other ``queued`` runs wait for no process; an ``idle`` chat neither (its kernel's holder is checked when it is opened).
        """
        with self.session(write=False) as con:
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
        with self.session(write=False) as con:
            row = con.execute(f"SELECT {RUN_COLUMNS} FROM runs WHERE id = ?", [run_id]).fetchone()
        if row is None:
            raise NotFound(f"no run with id {run_id}", hint="`dsagent runs ls` lists runs", what="run", id=run_id)
        return run_from_row(row)

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
        where, params = listing_filters(kind=kind, status=status, parent_id=parent_id, since=since, cursor=cursor)
        sql = f"SELECT {RUN_COLUMNS} FROM runs {where} ORDER BY id DESC LIMIT ?"
        with self.session(write=False) as con:
            rows = con.execute(sql, [*params, limit]).fetchall()
        runs = [run_from_row(r) for r in rows]
        return Page(runs, str(runs[-1].id) if len(runs) == limit else None)

    def events(self, run_id: int, *, after: int = 0, limit: int | None = None) -> list[Event]:
        """Events of a run with ``seq > after``, oldest first (follow a run by passing the last seq)."""
        sql = "SELECT run_id, seq, time, type, payload FROM run_events WHERE run_id = ? AND seq > ? ORDER BY seq"
        params: list[Any] = [run_id, after]
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        with self.session(write=False) as con:
            rows = con.execute(sql, params).fetchall()
        return [Event(r[0], r[1], aware_utc(r[2]), r[3], json.loads(r[4]) if r[4] else {}) for r in rows]

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
        with self.session(write=False) as con:
            row = con.execute(f"SELECT {ARTIFACT_COLUMNS} FROM artifacts WHERE id = ?", [artifact_id]).fetchone()
        if row is None:
            raise NotFound(f"no artifact with id {artifact_id}", hint="`dsagent artifacts ls` lists artifacts", what="artifact", id=artifact_id)
        return artifact_from_row(row)

    def read_bytes(self, artifact_id: int) -> bytes:
        """The exact bytes of an artifact, wherever they are kept."""
        with self.session(write=False) as con:
            row = con.execute(f"SELECT a.sha256, {BLOB_WHERE_COLUMNS} FROM artifacts a LEFT JOIN blobs b ON a.sha256 = b.sha256 WHERE a.id = ?",
                              [artifact_id]).fetchone()
            if row is None:
                raise NotFound(f"no artifact with id {artifact_id}", hint="`dsagent artifacts ls` lists artifacts", what="artifact", id=artifact_id)
            return self.blob_bytes(con, artifact_id, row[0], row[1:])

    def blob_bytes(self, con: duckdb.DuckDBPyConnection, artifact_id: int, sha: str, where: Sequence[Any]) -> bytes:
        """An artifact's bytes from ``where`` (the ``BLOB_WHERE_COLUMNS`` of its blob row); call inside a session."""
        shard, pack, offset, known = where
        if not known:
            raise self.db.corrupt(f"artifact {artifact_id} references bytes {sha[:12]}... which are missing")
        if pack is not None:
            return self.packs.read(pack, offset, sha)  # under the lock: gc cannot move it meanwhile
        if shard is not None:
            data = self.inline.read(con, sha, shard)
            if data is None:
                raise self.db.corrupt(f"artifact {artifact_id} references bytes {sha[:12]}... which are missing")
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
        where, params = listing_filters(run_id=run_id, kind=kind, name=name, since=since, cursor=cursor)
        sql = f"SELECT {ARTIFACT_COLUMNS} FROM artifacts {where} ORDER BY id DESC LIMIT ?"
        with self.session(write=False) as con:
            rows = con.execute(sql, [*params, limit]).fetchall()
        items = [artifact_from_row(r) for r in rows]
        return Page(items, str(items[-1].id) if len(items) == limit else None)

    def artifact_count(self, run_id: int) -> int:
        """How many artifacts a run has."""
        with self.session(write=False) as con:
            return con.execute("SELECT count(*) FROM artifacts WHERE run_id = ?", [run_id]).fetchone()[0]

    def counts(self) -> dict[str, int]:
        """Row counts per table (for status displays and tests)."""
        with self.session(write=False) as con:
            return {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ("runs", "run_events", "artifacts", "blobs")}

    # -- batch sweeps and journals (SQL in batches.py / journal.py) ---------------

    def apply_journal(self, run_id: int, entries: Sequence[Any]) -> Run:
        """Write what a ``RunJournal`` recorded elsewhere (a Dask worker) for ``run_id``, in one transaction."""
        with self.transaction() as tx:
            return apply_entries(tx, run_id, entries)

    def apply_journals(self, writes: Sequence[tuple[int, Sequence[Any]]]) -> dict[int, Run]:
        """``apply_journal`` for several runs (a sweep's group commit), in one transaction; ``{run id: run}``."""
        with self.transaction() as tx:
            return batch_results.apply_journals(tx, writes)

    def create_children(self, parent_id: int, param_sets: Sequence[Mapping[str, Any]], *, title: str | None = None,
                        backend: str | None = None) -> list[Run]:
        """One ``queued`` ``batch-child`` run per parameter set under ``parent_id``, in one transaction."""
        with self.transaction() as tx:
            return batches.create_children(tx, parent_id, param_sets, title=title, backend=backend)

    def child_records(self, parent_id: int) -> dict[int, dict[str, Any]]:
        """Scalars the children of a batch recorded (``dsagent.record``): ``{run id: {name: value}}``."""
        with self.session(write=False) as con:
            return batches.child_records(con, parent_id)

    def cancel_children(self, parent_id: int, error: str) -> list[int]:
        """Mark a batch's queued/running children cancelled; their ids."""
        with self.transaction() as tx:
            return batches.cancel_children(tx, parent_id, error)

    # -- schedules (SQL in schedules.py) ---------------------------------------------

    def add_schedule(self, schedule: Any) -> Any:
        with self.transaction() as tx:
            return schedules.add_schedule(tx, schedule)

    def update_schedule(self, name: str, **changes: Any) -> Any:
        with self.transaction() as tx:
            return schedules.update_schedule(tx, name, changes)

    def delete_schedule(self, name: str) -> None:
        with self.transaction() as tx:
            schedules.delete_schedule(tx, name)

    def get_schedule(self, name: str) -> Any:
        with self.session(write=False) as con:
            return schedules.get_schedule(con, name)

    def list_schedules(self, *, limit: int = 50, cursor: str | None = None) -> Page[Any]:
        """Schedules by name, ``limit`` per page."""
        with self.session(write=False) as con:
            items = schedules.list_schedules(con, limit, cursor)
        return Page(items, items[-1].name if len(items) == limit else None)

    def claim_firing(self, name: str, version: int, expected: datetime | None, next_fire: datetime | None, *,
                     fired: datetime | None = None, pending: bool | None = None) -> bool:
        """Compare-and-set of a schedule's ``next_fire`` (see ``schedules.claim_firing``)."""
        with self.transaction() as tx:
            return schedules.claim_firing(tx, name, version, expected, next_fire, fired=fired, pending=pending)

    def take_pending_firing(self, name: str, version: int) -> bool:
        with self.transaction() as tx:
            return schedules.take_pending(tx, name, version)

    def set_schedule_last_run(self, name: str, run_id: int) -> None:
        with self.transaction() as tx:
            schedules.set_last_run(tx, name, run_id)

    def active_schedule_runs(self, name: str) -> list[int]:
        with self.session(write=False) as con:
            return schedules.active_runs(con, name)

    def acquire_scheduler_lease(self, owner: str, now: datetime, ttl: float) -> Any:
        """Take or renew the lease that makes one process the one that fires schedules; returns the holder."""
        with self.transaction() as tx:
            return schedules.acquire_lease(tx, owner, now, ttl)

    def release_scheduler_lease(self, owner: str) -> None:
        with self.transaction() as tx:
            schedules.release_lease(tx, owner)

    def scheduler_lease(self) -> Any:
        """Who fires the schedules now (``SchedulerLease``), or None."""
        with self.session(write=False) as con:
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

    def run_records(self, run_ids: Sequence[int]) -> dict[int, dict[str, Any]]:
        """Scalars the given runs recorded (``dsagent.record``): ``{run id: {name: value}}`` (see ``batches.run_records``)."""
        from dsagent.artifacts import batches

        with self.session(write=False) as con:
            return batches.run_records(con, run_ids)

    def child_status_counts(self, parent_id: int) -> dict[str, int]:
        """How many children of a batch are in each status (one query, for its live progress)."""
        from dsagent.artifacts import batches

        with self.session(write=False) as con:
            return batches.child_status_counts(con, parent_id)

    def event_outline(self, run_id: int) -> "EventOutline":
        """A run's newest event seq and the events a person took from the dashboard (see ``run_queries.event_outline``)."""
        from dsagent.artifacts import run_queries

        return run_queries.event_outline(self, run_id)

    # -- retention --------------------------------------------------------------

    def gc(self, older_than: timedelta, *, dry_run: bool = False) -> GcReport:
        """Delete finished runs older than ``older_than`` with their events, artifacts and unshared bytes.

        Then both database files are rewritten (DuckDB reuses freed blocks but
        never returns them to the OS), so the disk space really comes back.
        """
        return compact.collect_garbage(self, older_than, dry_run=dry_run)
