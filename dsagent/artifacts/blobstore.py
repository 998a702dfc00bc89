"""Inline artifact bytes: shard tables in ``dsagent-blobs.duckdb``, beside the main database.

Part of the store: every method runs inside a session of the workspace's
``Database`` (``connection.py``), which detaches this file at the session's
end. Since schema v4 nothing new is written here (bytes go to pack files,
``packs.py``); bytes of older workspaces are still read and gc'd.

Why a second file: listing runs and artifacts attaches the main file, and an
attach replays the write-ahead log; with blob bytes in the same file every
listing would replay (and every checkpoint rewrite) megabytes of images.
Why shards: DuckDB rewrites a table's open row group at each checkpoint, so
one ever-growing blob table made each write slower as the workspace grew;
a shard is closed at ``BLOB_SHARD_MAX_BYTES`` and never rewritten again.

Bytes are committed here *before* the main transaction that references them;
if that one fails, the bytes are orphans that ``gc`` removes.
"""

from __future__ import annotations

from pathlib import Path

import duckdb

from dsagent.artifacts import schema
from dsagent.artifacts.connection import Database

__all__ = ["InlineBlobs", "BLOB_ALIAS", "BLOB_DB_NAME"]

BLOB_ALIAS = "bl"
BLOB_DB_NAME = "dsagent-blobs.duckdb"


class InlineBlobs:
    """Reads and writes inline bytes; every method runs inside a ``Store`` session (lock held)."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.path: Path = db.path.with_name(BLOB_DB_NAME)
        self.attached: str | None = None  # None, "ro" or "rw" within the current session
        db.before_detach(self.detach)

    def _ensure(self, con: duckdb.DuckDBPyConnection, write: bool) -> None:
        if self.attached == "rw" or (self.attached == "ro" and not write):
            return
        if self.attached == "ro":
            self.detach(con)
        self.db.attach(con, read_only=not write, path=self.path, alias=BLOB_ALIAS)
        self.attached = "rw" if write else "ro"
        if write:
            for statement in schema.BLOB_DB_DDL:
                con.execute(statement.format(db=BLOB_ALIAS))

    def detach(self, con: duckdb.DuckDBPyConnection) -> None:
        if self.attached is not None:
            self.attached = None
            self.db.detach(con, alias=BLOB_ALIAS)

    def write(self, con: duckdb.DuckDBPyConnection, blobs: dict[str, bytes]) -> dict[str, int]:
        """Commit ``blobs`` (sha256 -> bytes) into shards; returns sha256 -> shard."""
        if not blobs:
            return {}
        cur = con.cursor()  # its own transaction: the caller's main transaction is still open
        try:
            self._ensure(cur, write=True)
            cur.execute("BEGIN")
            placed = self._place(cur, blobs)
            for shard in sorted(set(placed.values())):
                rows = [(sha, blobs[sha]) for sha, s in placed.items() if s == shard]
                for first in range(0, len(rows), 100):
                    chunk = rows[first : first + 100]
                    cur.execute(
                        f"INSERT INTO {BLOB_ALIAS}.{schema.shard_table(shard)} VALUES " + ", ".join(["(?, ?)"] * len(chunk)),
                        [value for row in chunk for value in row],
                    )
            cur.execute("COMMIT")
            return placed
        except BaseException:
            try:
                cur.execute("ROLLBACK")
            except duckdb.Error:
                pass
            raise
        finally:
            cur.close()

    def _place(self, cur: duckdb.DuckDBPyConnection, blobs: dict[str, bytes]) -> dict[str, int]:
        """Pick a shard per blob, opening a new shard table when the current one is full."""
        row = cur.execute(f"SELECT shard, bytes, blobs FROM {BLOB_ALIAS}.blob_shards ORDER BY shard DESC LIMIT 1").fetchone()
        shard, used, count = row if row else (-1, 0, 0)
        fresh = row is None
        placed: dict[str, int] = {}
        for sha, data in blobs.items():
            full = count >= schema.BLOB_SHARD_MAX_BLOBS or (count > 0 and used + len(data) > schema.BLOB_SHARD_MAX_BYTES)
            if fresh or full:
                if not fresh:
                    self._save_usage(cur, shard, used, count)
                shard, used, count, fresh = shard + 1, 0, 0, False
                cur.execute(schema.shard_ddl(BLOB_ALIAS, shard))
                cur.execute(f"INSERT INTO {BLOB_ALIAS}.blob_shards VALUES (?, 0, 0)", [shard])
            placed[sha] = shard
            used += len(data)
            count += 1
        self._save_usage(cur, shard, used, count)
        return placed

    @staticmethod
    def _save_usage(cur: duckdb.DuckDBPyConnection, shard: int, used: int, count: int) -> None:
        cur.execute(f"UPDATE {BLOB_ALIAS}.blob_shards SET bytes = ?, blobs = ? WHERE shard = ?", [used, count, shard])

    def read(self, con: duckdb.DuckDBPyConnection, sha256: str, shard: int) -> bytes | None:
        self._ensure(con, write=False)
        row = con.execute(f"SELECT data FROM {BLOB_ALIAS}.{schema.shard_table(shard)} WHERE sha256 = ?", [sha256]).fetchone()
        return bytes(row[0]) if row else None

    def drop_unreferenced(self, con: duckdb.DuckDBPyConnection, main_alias: str) -> int:
        """Delete bytes no ``blobs`` row of the main database points to; drop emptied shards. Returns rows deleted."""
        if not self.path.exists():
            return 0
        self._ensure(con, write=True)
        shards = [r[0] for r in con.execute(f"SELECT shard FROM {BLOB_ALIAS}.blob_shards ORDER BY shard").fetchall()]
        deleted = 0
        con.execute("BEGIN")
        try:
            for shard in shards:
                table = f"{BLOB_ALIAS}.{schema.shard_table(shard)}"
                deleted += con.execute(
                    f"DELETE FROM {table} WHERE sha256 NOT IN (SELECT sha256 FROM {main_alias}.blobs WHERE shard = ?)", [shard]
                ).fetchone()[0]
                used, count = con.execute(f"SELECT coalesce(sum(octet_length(data)), 0), count(*) FROM {table}").fetchone()
                if count == 0 and shard != shards[-1]:  # the last shard stays: new bytes go there
                    con.execute(f"DROP TABLE {table}")
                    con.execute(f"DELETE FROM {BLOB_ALIAS}.blob_shards WHERE shard = ?", [shard])
                else:
                    self._save_usage(con, shard, used, count)
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        return deleted

    def tables(self, con: duckdb.DuckDBPyConnection) -> list[str]:
        """Tables of the attached blob database, shards included (for the compacting copy)."""
        rows = con.execute("SELECT table_name FROM duckdb_tables() WHERE database_name = ? ORDER BY table_name", [BLOB_ALIAS]).fetchall()
        return [r[0] for r in rows]
