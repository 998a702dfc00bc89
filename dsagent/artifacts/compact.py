"""Retention for the store: ``gc`` deletes old runs, then gives the disk space back.

DuckDB reuses freed blocks for new data but never shrinks its file, so after
gc the live rows are copied into a fresh file that then replaces the old one
(``os.replace`` is atomic: a crash leaves either file whole). This runs under
the store's file lock, so no other process has the files open.
"""

from __future__ import annotations

import contextlib
import os
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import duckdb

from dsagent.artifacts import schema
from dsagent.artifacts.blobstore import BLOB_ALIAS
from dsagent.artifacts.connection import ALIAS
from dsagent.artifacts.models import GcReport, utcnow
from dsagent.artifacts.packs import HEADER_BYTES, PACK_MAX_BYTES
from dsagent.artifacts.rows import naive_utc

if TYPE_CHECKING:
    from dsagent.artifacts.store import Store

__all__ = ["collect_garbage", "rewrite", "file_bytes"]

_NEW = "nw"


def file_bytes(*paths: Path) -> int:
    """Size of the database files plus their write-ahead logs, if any."""
    total = 0
    for candidate in [q for p in paths for q in (p, Path(str(p) + ".wal"))]:
        try:
            total += candidate.stat().st_size
        except FileNotFoundError:
            pass
    return total


def collect_garbage(store: "Store", older_than: timedelta, *, dry_run: bool = False) -> GcReport:
    """``Store.gc``: delete old finished runs and bytes nothing else uses, then rewrite the files."""
    cutoff = naive_utc(utcnow() - older_than)
    before = file_bytes(store.path, store.inline.path) + store.packs.total_bytes()
    with store.transaction() as tx:
        con = tx.con
        con.execute(
            "CREATE OR REPLACE TEMP TABLE gc_runs AS SELECT id FROM runs WHERE status IN ? AND coalesce(finished, created) < ?",
            [list(schema.TERMINAL_STATUSES), cutoff],
        )
        counts = con.execute(
            "SELECT (SELECT count(*) FROM temp.gc_runs),"
            " (SELECT count(*) FROM run_events WHERE run_id IN (SELECT id FROM temp.gc_runs)),"
            " (SELECT count(*) FROM artifacts WHERE run_id IN (SELECT id FROM temp.gc_runs))"
        ).fetchone()
        con.execute(
            "CREATE OR REPLACE TEMP TABLE gc_blobs AS SELECT sha256, size, shard IS NULL AS external FROM blobs b"
            " WHERE NOT EXISTS (SELECT 1 FROM artifacts a WHERE a.sha256 = b.sha256 AND a.run_id NOT IN (SELECT id FROM temp.gc_runs))"
        )
        blobs = con.execute("SELECT sha256, size, external FROM temp.gc_blobs").fetchall()
        packed_gone = {r[0] for r in con.execute("SELECT b.sha256 FROM blobs b JOIN temp.gc_blobs g ON b.sha256 = g.sha256 WHERE b.pack IS NOT NULL").fetchall()}
        if not dry_run:
            for table, key in (("run_events", "run_id"), ("artifacts", "run_id"), ("runs", "id")):
                con.execute(f"DELETE FROM {table} WHERE {key} IN (SELECT id FROM temp.gc_runs)")
            con.execute("DELETE FROM blobs WHERE sha256 IN (SELECT sha256 FROM temp.gc_blobs)")
        con.execute("DROP TABLE temp.gc_runs")
        con.execute("DROP TABLE temp.gc_blobs")
    files_removed = orphans = 0
    if not dry_run:
        with store.session(write=False) as con:
            legacy_gone = sum(1 for sha, _, external in blobs if not external and sha not in packed_gone)
            orphans = store.inline.drop_unreferenced(con, ALIAS) - legacy_gone
        with store.db.locked() as con:
            files_removed = _remove_unreferenced_files(store, con)
            orphans += repack(store, con, packed_gone)
            if counts[0] or blobs:
                rewrite(store, con)
    return GcReport(
        dry_run=dry_run,
        runs=counts[0],
        events=counts[1],
        artifacts=counts[2],
        blobs=len(blobs),
        blob_bytes=sum(size for _, size, _ in blobs),
        files_removed=files_removed,
        db_bytes_before=before,
        db_bytes_after=file_bytes(store.path, store.inline.path) + store.packs.total_bytes(),
        orphans_removed=orphans,
    )


def _remove_unreferenced_files(store: "Store", con: duckdb.DuckDBPyConnection) -> int:
    """Delete blob files no row points to (left by gc'd runs or killed writers); inside ``store.db.locked()``."""
    store.db.attach(con, read_only=True)
    try:
        external = {r[0] for r in con.execute("SELECT sha256 FROM blobs WHERE shard IS NULL").fetchall()}
    finally:
        store.db.detach(con)
    removed = store.blobs.remove_temp_files()
    for sha in list(store.blobs.all_hashes()):
        if sha not in external:
            store.blobs.remove(sha)
            removed += 1
    return removed


def repack(store: "Store", con: duckdb.DuckDBPyConnection, collected: frozenset[str] | set[str] = frozenset()) -> int:
    """Copy referenced records out of packs that hold unreferenced ones; returns orphan records dropped.

    ``collected``: sha256 of bytes this gc deleted on purpose (not counted as orphans).
    Runs inside ``store.db.locked()`` (``con`` is its instance). A pack another live process
    appends to (its flock is held) is left alone: its unreferenced records may be bytes of a
    transaction that has not committed yet. This process's own pack is given back first if idle.
    """
    store.packs.give_back_idle()
    numbers = store.packs.numbers()
    if not numbers:
        return 0
    claimed: dict[int, int] = {}  # pack -> fd holding its flock until it is deleted (or left)
    store.db.attach(con, read_only=False)
    try:
        # what to keep comes from the rows, never from scanning a pack: a torn record
        # (a writer killed inside its append) hides the records written after it
        live: dict[int, list[tuple[int, str, int]]] = {}
        for sha, pack, offset, size in con.execute(
            "SELECT sha256, pack, pack_offset, size FROM blobs WHERE pack IS NOT NULL ORDER BY pack, pack_offset"
        ).fetchall():
            live.setdefault(pack, []).append((offset, sha, size))
        keep: list[tuple[int, int, str, int]] = []  # pack, offset, sha, length of records to copy
        orphans = 0
        for pack in numbers:
            mine = live.get(pack, [])
            fd = store.packs.try_claim(pack)
            if fd is None:
                continue  # another process appends to it now (or it is gone)
            if sum(HEADER_BYTES + size for _, _, size in mine) == os.fstat(fd).st_size:
                os.close(fd)
                continue  # every byte is referenced
            claimed[pack] = fd
            referenced = {offset for offset, _, _ in mine}
            orphans += sum(1 for offset, sha, _ in store.packs.records(pack) if offset not in referenced and sha not in collected)
            keep += [(pack, offset, sha, size) for offset, sha, size in mine]
        if not claimed:
            return 0
        moved = _copy_records(store, keep)
        if moved:
            con.execute("BEGIN")
            try:
                rows = [(sha, pack, offset) for sha, (pack, offset) in moved.items()]
                for first in range(0, len(rows), 500):
                    chunk = rows[first : first + 500]
                    con.execute(
                        f"UPDATE {ALIAS}.blobs SET pack = m.pack, pack_offset = m.off FROM (VALUES "
                        + ", ".join(["(?, ?, ?)"] * len(chunk)) + ") m(sha, pack, off) WHERE blobs.sha256 = m.sha",
                        [v for row in chunk for v in row],
                    )
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
    except BaseException:
        for fd in claimed.values():
            os.close(fd)
        raise
    finally:
        store.db.detach(con)
    store.packs.remove(claimed)
    return orphans


def _copy_records(store: "Store", keep: list[tuple[int, int, str, int]]) -> dict[str, tuple[int, int]]:
    """Append the records ``keep`` names to fresh packs of gc's own; sha256 -> (pack, offset)."""
    moved: dict[str, tuple[int, int]] = {}
    if not keep:
        return moved
    with contextlib.ExitStack() as stack:
        writer = stack.enter_context(store.packs.fresh_writer())
        batch: dict[str, bytes] = {}
        for index, (pack, offset, sha, length) in enumerate(keep):
            batch[sha] = store.packs.read_record(pack, offset, length)
            if index == len(keep) - 1 or sum(map(len, batch.values())) >= 64 << 20:
                if writer.size() >= PACK_MAX_BYTES:
                    writer = stack.enter_context(store.packs.fresh_writer())
                moved.update(writer.append(batch))
                batch = {}
    return moved


def rewrite(store: "Store", con: duckdb.DuckDBPyConnection) -> None:
    """Rewrite the main database and the blob database, each into a fresh file swapped in place (inside ``store.db.locked()``)."""
    main_ddl = [statement for step in schema.MIGRATIONS for statement in step]
    _rewrite_file(store, con, store.path, ALIAS, main_ddl, list(schema.TABLES))
    if store.inline.path.exists():
        store.db.attach(con, read_only=True, path=store.inline.path, alias=BLOB_ALIAS)
        try:
            tables = store.inline.tables(con)
        finally:
            store.db.detach(con, alias=BLOB_ALIAS)
        shards = [int(t.rsplit("_", 1)[1]) for t in tables if t.startswith("blob_data_")]
        blob_ddl = list(schema.BLOB_DB_DDL) + [schema.shard_ddl("{db}", n) for n in shards]
        _rewrite_file(store, con, store.inline.path, BLOB_ALIAS, blob_ddl, tables)


def _rewrite_file(store: "Store", con: duckdb.DuckDBPyConnection, path: Path, alias: str, ddl: list[str], tables: list[str]) -> None:
    target = Path(str(path) + ".compact")
    for leftover in (target, Path(str(target) + ".wal")):
        leftover.unlink(missing_ok=True)  # from a gc that was killed midway
    # fold the write-ahead log into the file first: it must not outlive the swap
    store.db.attach(con, read_only=False, path=path, alias=alias)
    con.execute(f"CHECKPOINT {alias}")
    store.db.detach(con, alias=alias)
    store.db.attach(con, read_only=True, path=path, alias=alias)
    try:
        store.db.attach(con, read_only=False, path=target, alias=_NEW)
        try:
            con.execute("BEGIN")
            for statement in ddl:
                con.execute(statement.format(db=_NEW))
            for table in tables:
                con.execute(f"DELETE FROM {_NEW}.{table}")  # rows the DDL seeded
                con.execute(f"INSERT INTO {_NEW}.{table} SELECT * FROM {alias}.{table}")
            con.execute("COMMIT")
            con.execute(f"CHECKPOINT {_NEW}")
        finally:
            store.db.detach(con, alias=_NEW)
    finally:
        store.db.detach(con, alias=alias)
    if Path(str(target) + ".wal").exists() or Path(str(path) + ".wal").exists():
        target.unlink(missing_ok=True)  # not fully checkpointed: keep the old file, it is still complete
        return
    _fsync(target)
    os.replace(target, path)
    _fsync(path.parent)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
