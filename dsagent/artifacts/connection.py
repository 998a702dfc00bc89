"""The workspace's DuckDB file behind the cross-process lock: the one owner of the connection.

Many processes share one workspace. DuckDB lets one process hold a file
read-write and refuses every other open meanwhile (it fails at once, it does
not wait), so no process keeps the file open for long: each unit of work takes
the workspace's file lock (``dsagent.duckdb.lock``, taken in turns, see
``turns.py``; waiting up to ``store_lock_timeout`` seconds, then
``StoreLocked``), attaches the file to a long-lived in-memory DuckDB instance,
does its work, and detaches. Attaching costs ~1-2 ms where opening a new
DuckDB instance costs ~20 ms (DuckDB builds its catalog of built-in functions
per instance), which is why the instance outlives the attachment. Readers
take the same lock, because a read-only open also fails while another
process writes.

Every other module of the store reaches the file through a ``Database``:
``session()`` for one unit of work, ``transaction()`` for one atomic write,
``locked()`` for whole-file work (gc's rewrite), ``attach``/``detach`` for
extra files inside those. Nothing here knows about runs or artifacts.
"""

from __future__ import annotations

import logging
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import duckdb

from dsagent.artifacts.turns import LockTimeout, TurnLock
from dsagent.errors import DsagentError, StorageFull, StoreCorrupt, StoreLocked

__all__ = ["Database", "LockStats", "ALIAS", "CHECKPOINT_THRESHOLD"]

log = logging.getLogger(__name__)

#: the alias the workspace file is attached under (``USE``d, so queries name tables plainly)
ALIAS = "ws"
CHECKPOINT_THRESHOLD = "16KB"
_DUCKDB_MAGIC = b"DUCK"


@dataclass
class LockStats:
    """How long this process waited for its turn at the file (what sharing costs)."""

    acquisitions: int = 0
    waits: int = 0  # acquisitions that waited more than 1 ms
    wait_seconds: float = 0.0
    max_wait_seconds: float = 0.0
    hold_seconds: float = 0.0  # time spent holding the lock (attach, work, detach)


class Database:
    """The DuckDB file at ``path``, reached one locked unit of work at a time; thread-safe."""

    def __init__(self, path: Path, lock_timeout: float) -> None:
        self.path = path
        self.lock_timeout = lock_timeout
        self.stats = LockStats()
        self._file_lock = TurnLock(str(path) + ".lock")
        self._thread_lock = threading.RLock()
        self._con: duckdb.DuckDBPyConnection | None = None
        self._before_detach: list[Callable[[duckdb.DuckDBPyConnection], None]] = []

    def before_detach(self, callback: Callable[[duckdb.DuckDBPyConnection], None]) -> None:
        """Call ``callback(con)`` at the end of every session, before the file is detached (to detach extra files)."""
        self._before_detach.append(callback)

    def close(self) -> None:
        with self._thread_lock:
            if self._con is not None:
                self._con.close()
                self._con = None

    # -- units of work ------------------------------------------------------------

    @contextmanager
    def session(self, *, write: bool) -> Iterator[duckdb.DuckDBPyConnection]:
        """The file attached as the current database, for one unit of work, under the file lock."""
        with self._thread_lock:
            self._acquire_file_lock()
            held_from = time.perf_counter()
            try:
                con = self._instance()
                self.attach(con, read_only=not write)
                try:
                    yield con
                except duckdb.Error as exc:
                    translated = self.translate(exc)
                    if translated is exc:
                        raise
                    raise translated from exc
                finally:
                    for callback in self._before_detach:
                        callback(con)
                    self.detach(con)
            finally:
                self._file_lock.release()
                self.stats.hold_seconds += time.perf_counter() - held_from

    @contextmanager
    def transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A write session inside BEGIN ... COMMIT (ROLLBACK when the block raises)."""
        with self.session(write=True) as con:
            con.execute("BEGIN")
            try:
                yield con
                con.execute("COMMIT")
            except BaseException:
                try:
                    con.execute("ROLLBACK")
                except duckdb.Error:
                    pass  # the transaction is gone already (a fatal error)
                raise

    @contextmanager
    def locked(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """The file lock and the DuckDB instance with nothing attached (whole-file work such as gc's rewrite)."""
        with self._thread_lock:
            self._acquire_file_lock()
            try:
                yield self._instance()
            finally:
                self._file_lock.release()

    # -- attaching files (inside a session or ``locked()``) -----------------------------

    def attach(self, con: duckdb.DuckDBPyConnection, *, read_only: bool, path: Path | None = None, alias: str = ALIAS) -> None:
        """Attach ``path`` (default: the workspace file, then made the current database) as ``alias``."""
        target = str(path or self.path).replace("'", "''")
        mode = " (READ_ONLY)" if read_only else ""
        deadline = time.monotonic() + self.lock_timeout
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
                        timeout=self.lock_timeout,
                    ) from None
                raise self.corrupt(str(exc), path) from exc
            except duckdb.Error as exc:
                raise self.corrupt(str(exc), path) from exc
        if alias == ALIAS:
            con.execute(f"USE {alias}")

    def detach(self, con: duckdb.DuckDBPyConnection, alias: str = ALIAS) -> None:
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

    # -- errors -----------------------------------------------------------------------

    def refuse_foreign_file(self) -> None:
        """Raise ``StoreCorrupt`` if the file exists but is not a DuckDB database (it is left untouched)."""
        if not self.path.exists():
            return
        try:
            with open(self.path, "rb") as handle:
                header = handle.read(12)
        except OSError as exc:
            raise StoreCorrupt(f"cannot read {self.path}: {exc.strerror}", hint="check its permissions", path=str(self.path)) from exc
        if header[8:12] != _DUCKDB_MAGIC:
            raise self.corrupt("it is not a DuckDB database")

    def corrupt(self, why: str, path: Path | None = None) -> StoreCorrupt:
        """The error for a file that cannot be used (``path`` defaults to the workspace file)."""
        path = path or self.path
        return StoreCorrupt(
            f"{path} cannot be used as the workspace database: {why}; it was left untouched",
            hint="move the file away (or set DSAGENT_HOME to another folder) and run again",
            path=str(path),
        )

    def translate(self, exc: duckdb.Error) -> DsagentError | duckdb.Error:
        """A DuckDB error as the ``DsagentError`` users can act on (full disk, damaged file), else itself."""
        text = str(exc)
        if "No space left" in text or "disk is full" in text.lower():
            return StorageFull(
                f"the disk is full: cannot write {self.path}: {text}",
                hint="free disk space (or run `dsagent gc --older-than 30d`) and run again; earlier data is intact",
                path=str(self.path),
            )
        if "not a valid DuckDB database" in text or "orrupt" in text or "checksum" in text.lower():
            return self.corrupt(text)
        return exc

    # -- the lock and the instance ----------------------------------------------------

    def _instance(self) -> duckdb.DuckDBPyConnection:
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

    def _acquire_file_lock(self) -> None:
        try:
            waited = self._file_lock.acquire(self.lock_timeout)
        except LockTimeout:
            raise StoreLocked(
                f"the workspace database {self.path} stayed busy for {self.lock_timeout:g} s",
                hint="another dsagent process holds it for long (a gc?); try again, or raise DSAGENT_STORE_LOCK_TIMEOUT",
                path=str(self.path),
                timeout=self.lock_timeout,
            ) from None
        stats = self.stats
        stats.acquisitions += 1
        stats.wait_seconds += waited
        stats.max_wait_seconds = max(stats.max_wait_seconds, waited)
        stats.waits += waited > 0.001
