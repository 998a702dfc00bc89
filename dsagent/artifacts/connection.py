"""The workspace's DuckDB file behind the cross-process lock: the one owner of the connection.

Many processes share one workspace. DuckDB lets one process hold a file
read-write and refuses every other open meanwhile (it fails at once, it does
not wait), so a process holds the file only while it works: a unit of work
takes the workspace's file lock (``dsagent.duckdb.lock``, taken in turns, see
``turns.py``; waiting up to ``store_lock_timeout`` seconds, then
``StoreLocked``) and attaches the file to a long-lived in-memory DuckDB
instance (~1-2 ms, where a new instance costs ~20 ms: DuckDB builds its
catalog of built-in functions per instance). Readers take the same lock,
because a read-only open also fails while another process writes.

**Holding between units of work.** After a unit of work the file stays
attached and locked for up to ``store_hold_seconds`` as long as no other
process waits for it: a writer recording cell after cell, or a page of
listings, then pays neither the attach (with its write-ahead-log replay) nor
the lock, and commits need no checkpoint (nobody replays the log meanwhile).
Another process waiting is seen through the lock's ``.waiting`` file: the
next unit of work, or a watcher thread that looks every
``WATCH_INTERVAL`` seconds while a file is held idle, then releases at once.
Releasing checkpoints first when the log has grown past
``CHECKPOINT_BYTES``, so the next process's attach replays little. A
process writing back to back finishes a turn first: ``TURN_SECONDS`` when a
reader waits, ``WRITER_TURN_SECONDS`` when only writers do (each turn pays
an attach, a replay and often a checkpoint; longer turns share them).

While the file is held read-write nobody else can change it, so callers may
keep what they learnt from it in ``held_facts`` (a run's last event seq, the
last ids handed out) and skip asking again; the facts are dropped when the
file is let go (``before_release`` callbacks save what must last first), a
transaction rolls back, or a write session runs SQL of its own.

Every other module of the store reaches the file through a ``Database``:
``session()`` for one unit of work, ``transaction()`` for one atomic write,
``locked()`` for whole-file work (gc's rewrite), ``attach``/``detach`` for
extra files inside those. Nothing here knows about runs or artifacts.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
import weakref
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import duckdb

from dsagent.artifacts.turns import LockTimeout, TurnLock
from dsagent.errors import DsagentError, StorageFull, StoreCorrupt, StoreLocked

__all__ = ["Database", "LockStats", "ALIAS", "CHECKPOINT_BYTES", "HELD_CHECKPOINT_THRESHOLD", "WATCH_INTERVAL", "TURN_SECONDS",
           "WRITER_TURN_SECONDS"]

log = logging.getLogger(__name__)

#: the alias the workspace file is attached under (``USE``d, so queries name tables plainly)
ALIAS = "ws"
#: the write-ahead log a released file may keep; bigger ones are checkpointed before detaching
#: (every attach replays the log, and replay costs far more per entry than the commit that wrote it)
CHECKPOINT_BYTES = 16 << 10
#: while a process holds the file across units of work, commits checkpoint only past this
HELD_CHECKPOINT_THRESHOLD = "1MB"
#: how often a file held idle is checked for waiting processes (the longest a waiter waits extra)
WATCH_INTERVAL = 0.002
#: while a reader waits, a process may go on with back-to-back units of work for this long per turn
#: (several transactions per attach instead of one: what makes 4 busy writers fast)
TURN_SECONDS = 0.025
#: while only writers wait, turns are this long: each turn pays an attach, a log replay, the first
#: lookups of ids and seqs and a checkpoint (~10 ms of CPU), so longer turns share those among more
#: transactions. 0.25 s instead of 0.1 s: 4 busy writers took 10-13 turns instead of 23-41 for 100
#: transactions and ~25% less CPU while holding the lock; a writer may wait 3 turns (0.75 s), a reader
#: still one short turn
WRITER_TURN_SECONDS = 0.25
_DUCKDB_MAGIC = b"DUCK"


@dataclass
class LockStats:
    """How long this process waited for its turn at the file (what sharing costs)."""

    acquisitions: int = 0
    waits: int = 0  # acquisitions that waited more than 1 ms
    wait_seconds: float = 0.0
    max_wait_seconds: float = 0.0
    hold_seconds: float = 0.0  # time spent holding the lock (attach, work, idle holding, detach)


class Database:
    """The DuckDB file at ``path``, reached one locked unit of work at a time; thread-safe.

    ``hold_seconds``: how long the file stays attached after a unit of work while no one else waits (0: never).
    """

    def __init__(self, path: Path, lock_timeout: float, hold_seconds: float = 0.0) -> None:
        self.path = path
        self.lock_timeout = lock_timeout
        self.hold_seconds = hold_seconds
        self.stats = LockStats()
        self._file_lock = TurnLock(str(path) + ".lock")
        self._thread_lock = threading.RLock()
        self._con: duckdb.DuckDBPyConnection | None = None
        self._before_detach: list[Callable[[duckdb.DuckDBPyConnection], None]] = []
        self._before_release: list[Callable[[duckdb.DuckDBPyConnection], None]] = []
        self._attached: str | None = None  # "ro" / "rw": the workspace file is attached and the lock held
        self._in_use = False
        self._coming = 0  # units of work begun that have not taken the file yet (``coming()``)
        self._coming_lock = threading.Lock()
        self._held_from = 0.0
        self._idle_since = 0.0
        #: what callers learnt from the file while this process holds it read-write (nobody else can
        #: change it meanwhile); emptied when the file is let go, a transaction rolls back, or a
        #: write session runs SQL of its own
        self.held_facts: dict[object, object] = {}
        _ALL.add(self)

    def before_detach(self, callback: Callable[[duckdb.DuckDBPyConnection], None]) -> None:
        """Call ``callback(con)`` at the end of every unit of work (to detach extra files it attached)."""
        self._before_detach.append(callback)

    def before_release(self, callback: Callable[[duckdb.DuckDBPyConnection], None]) -> None:
        """Call ``callback(con)`` (autocommit) before a file held read-write is let go: to save ``held_facts``."""
        self._before_release.append(callback)

    def close(self) -> None:
        """Release the file (checkpointing a long log first) and close the DuckDB instance."""
        with self._thread_lock:
            self.release()
            if self._con is not None:
                self._con.close()
                self._con = None

    # -- units of work ------------------------------------------------------------

    @contextmanager
    def session(self, *, write: bool) -> Iterator[duckdb.DuckDBPyConnection]:
        """The file attached as the current database, for one unit of work, under the file lock."""
        with self._session(write) as con:
            if write:
                self.held_facts.clear()  # its SQL may change what they say
            yield con

    @contextmanager
    def _session(self, write: bool) -> Iterator[duckdb.DuckDBPyConnection]:
        with self._thread_lock:
            if self._in_use:
                raise RuntimeError("store sessions do not nest: finish the outer one first")
            con = self._enter(write)
            self._in_use = True
            done = False
            try:
                yield con
                done = True
            except duckdb.Error as exc:
                translated = self.translate(exc)
                if translated is exc:
                    raise
                raise translated from exc
            finally:
                self._in_use = False
                self._leave(con, done)

    @contextmanager
    def transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A write session inside BEGIN ... COMMIT (ROLLBACK when the block raises)."""
        with self._session(True) as con:
            con.execute("BEGIN")
            try:
                yield con
                con.execute("COMMIT")
            except BaseException:
                self.held_facts.clear()  # they may describe rows that are rolled back
                try:
                    con.execute("ROLLBACK")
                except duckdb.Error:
                    pass  # the transaction is gone already (a fatal error)
                raise

    @contextmanager
    def locked(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """The file lock and the DuckDB instance with nothing attached (whole-file work such as gc's rewrite)."""
        with self._thread_lock:
            if self._attached is not None:
                self._detach_held()  # keep the lock we hold, let go of the attachment
            else:
                self._acquire_file_lock()
            self.held_facts.clear()
            try:
                yield self._instance()
            finally:
                self._file_lock.release()
                self.stats.hold_seconds += time.perf_counter() - self._held_from

    @contextmanager
    def coming(self) -> Iterator[None]:
        """A unit of work of this process is on its way (writing its bytes first): a held file is not let go meanwhile.

        Only the watcher's idle check honours it; the unit of work itself still ends a turn that is over.
        """
        with self._coming_lock:  # not the thread lock: a session of another thread may hold that for long
            self._coming += 1
        try:
            yield
        finally:
            with self._coming_lock:
                self._coming = max(0, self._coming - 1)  # (a child forked inside the block starts at 0)

    def release(self) -> None:
        """Give the file back now if it is held between units of work (checkpointing a long log first)."""
        with self._thread_lock:
            if self._attached is None or self._in_use:
                return
            self._detach_held()
            self._file_lock.release()
            self.stats.hold_seconds += time.perf_counter() - self._held_from

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

    def log_bytes(self) -> int:
        """Size of the file's write-ahead log (0 when there is none)."""
        try:
            return os.stat(str(self.path) + ".wal").st_size
        except FileNotFoundError:
            return 0

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

    # -- holding the file between units of work -------------------------------------------

    def _enter(self, write: bool) -> duckdb.DuckDBPyConnection:
        """The instance with the file attached (``write``: read-write), reusing a held attachment when it may."""
        if self._attached is not None and ((write and self._attached == "ro") or self._turn_is_over()):
            self.release()  # someone waits and this turn is long enough, or a read-only attachment cannot write
        if self._attached is None:
            self._acquire_file_lock(reader=not write)
            try:
                con = self._instance()
                # a long log left behind (a killed writer) is replayed by every read-only
                # attach: attach read-write instead, so this release checkpoints it away
                read_only = not write and self.log_bytes() <= CHECKPOINT_BYTES
                self.attach(con, read_only=read_only)
            except BaseException:
                self._file_lock.release()
                raise
            self._attached = "ro" if read_only else "rw"
        assert self._con is not None
        return self._con

    def _leave(self, con: duckdb.DuckDBPyConnection, done: bool) -> None:
        for callback in self._before_detach:
            callback(con)
        if not done or self._con is None or self.hold_seconds <= 0 or self._turn_is_over():
            self.release()
            return
        self._idle_since = time.monotonic()
        _WATCHER.watch(self)

    def _release_if_due(self) -> bool:
        """The watcher's check: release when someone waits or the hold ran out; True when nothing is held any more."""
        if not self._thread_lock.acquire(blocking=False):
            return False  # a unit of work runs: it decides at its end
        try:
            if self._attached is None:
                return True
            if self._in_use or (self._coming and not self._turn_is_over()):
                return False
            idle = time.monotonic() - self._idle_since
            # someone waits: give way unless the next unit of work follows at once (back-to-back writes)
            if idle >= self.hold_seconds or ((idle >= WATCH_INTERVAL or self._turn_is_over()) and self._file_lock.others_waiting()):
                self.release()
                return True
            return False
        finally:
            self._thread_lock.release()

    def _turn_is_over(self) -> bool:
        """Another process waits and this one has held the file for a whole turn (a short one when a reader waits)."""
        held = time.perf_counter() - self._held_from
        if held < TURN_SECONDS or not self._file_lock.others_waiting():
            return False
        return held >= WRITER_TURN_SECONDS or self._file_lock.readers_waiting()

    def _detach_held(self) -> None:
        con, self._attached, read_write = self._con, None, self._attached == "rw"
        if con is not None and read_write and self.held_facts:
            for callback in self._before_release:
                try:
                    callback(con)
                except duckdb.Error:
                    log.warning("saving what %s held failed; the next holder recomputes it", self.path, exc_info=True)
        self.held_facts.clear()  # once let go, other processes may change the file
        if con is None:
            return
        if read_write and self.log_bytes() > CHECKPOINT_BYTES:
            try:
                con.execute(f"CHECKPOINT {ALIAS}")
            except duckdb.Error:
                # the commits are safe in the log (the next attach replays it); say why the file stays long
                log.warning("checkpointing %s failed; its log is replayed on the next attach", self.path, exc_info=True)
        self.detach(con)

    # -- the lock and the instance ----------------------------------------------------

    def _instance(self) -> duckdb.DuckDBPyConnection:
        if self._con is None:
            con = duckdb.connect(":memory:")
            # Measured (bench/artifacts.py): a checkpoint at every detach rewrote the open row
            # groups each time, so writes got slower as tables grew; replaying the log at attach
            # grows with its entries. So: no checkpoint at detach; commits checkpoint past a
            # bound; a release checkpoints past CHECKPOINT_BYTES (see the module docstring).
            con.execute("SET checkpoint_on_detach = 'DISABLED'")
            threshold = HELD_CHECKPOINT_THRESHOLD if self.hold_seconds > 0 else f"{CHECKPOINT_BYTES}B"
            con.execute(f"SET checkpoint_threshold = '{threshold}'")
            self._con = con
        return self._con

    def _acquire_file_lock(self, *, reader: bool = False) -> None:
        try:
            waited = self._file_lock.acquire(self.lock_timeout, reader=reader)
        except LockTimeout:
            raise StoreLocked(
                f"the workspace database {self.path} stayed busy for {self.lock_timeout:g} s",
                hint="another dsagent process holds it for long (a gc?); try again, or raise DSAGENT_STORE_LOCK_TIMEOUT",
                path=str(self.path),
                timeout=self.lock_timeout,
            ) from None
        self._held_from = time.perf_counter()
        stats = self.stats
        stats.acquisitions += 1
        stats.wait_seconds += waited
        stats.max_wait_seconds = max(stats.max_wait_seconds, waited)
        stats.waits += waited > 0.001

    def _forget_after_fork(self) -> None:
        """In a forked child: the parent's lock and attachment are not ours (never touch them)."""
        self._thread_lock = threading.RLock()
        self._coming_lock = threading.Lock()
        self._coming = 0
        self.held_facts.clear()
        if self._attached is not None or self._in_use:
            self._file_lock.forget()
            if self._con is not None:
                _INHERITED.append(self._con)  # closing it here could write to the parent's file
            self._con = None
        self._attached = None
        self._in_use = False


class _Watcher:
    """One daemon thread per process that lets go of files held idle once someone waits or the hold runs out."""

    def __init__(self) -> None:
        # strong references: a Database dropped while it holds the file must stay alive until
        # released, or its lock descriptor would leak and keep every other process out
        self._held: set[Database] = set()
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None

    def watch(self, db: Database) -> None:
        with self._wake:
            self._held.add(db)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="dsagent-store-hold", daemon=True)
                self._thread.start()
            self._wake.notify()

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._held:
                    self._wake.wait()
                held = list(self._held)
            time.sleep(WATCH_INTERVAL)
            for db in held:
                if db._release_if_due():
                    with self._wake:
                        self._held.discard(db)


_ALL: weakref.WeakSet[Database] = weakref.WeakSet()
_INHERITED: list[duckdb.DuckDBPyConnection] = []
_WATCHER = _Watcher()


def _close_all() -> None:
    # at exit: checkpoint a long log and close DuckDB cleanly (a session still running in
    # another thread keeps its lock; it dies with the process)
    for db in list(_ALL):
        # wait a little for the watcher thread's release (a checkpoint) to finish: cut off by the
        # interpreter's exit inside DuckDB, it aborts with "FATAL: exception not rethrown"
        if db._thread_lock.acquire(timeout=2.0):
            try:
                db.close()
            except Exception:
                log.debug("closing %s at exit failed", db.path, exc_info=True)
            finally:
                db._thread_lock.release()


def _before_fork() -> None:
    # a child must not inherit a held file: give it back first (a session in another thread keeps it)
    for db in list(_ALL):
        if db._thread_lock.acquire(blocking=False):
            try:
                db.release()
            finally:
                db._thread_lock.release()


def _after_fork_in_child() -> None:
    global _WATCHER
    _WATCHER = _Watcher()
    for db in list(_ALL):
        db._forget_after_fork()


atexit.register(_close_all)
os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)
