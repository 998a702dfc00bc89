"""The workspace lock, taken in turns by every process that reads or writes the database.

An OS file lock (``flock``): a killed process never leaves it held. Two
things a plain lock file (e.g. the ``filelock`` package, which polls) does not
give, and which matter when six processes share a workspace on two cores:

- waiters sleep in the kernel instead of polling, so waiting costs no CPU and
  a waiter is woken the moment the lock is free;
- turns: a waiter also holds a *shared* lock on ``<lock>.waiting``; a process
  that releases the main lock and sees that file locked stays away for a few
  milliseconds, so a writer recording cell after cell cannot starve readers.
  The holder asks ``others_waiting()`` too: a process that keeps the file
  between its units of work (``connection.py``) lets go once someone waits.
  A waiting reader also holds a shared lock on ``<lock>.reading``
  (``readers_waiting()``): writers may take longer turns among themselves,
  which a dashboard's read must not wait for.

The timeout is implemented with a helper thread doing the blocking ``flock``;
if the caller gives up, the thread releases the lock as soon as it gets it.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time

__all__ = ["TurnLock", "LockTimeout"]

#: how long a releasing process stays away when others wait
COURTESY_SECONDS = 0.003


class LockTimeout(Exception):
    """The lock was not free within the timeout."""


class TurnLock:
    """Exclusive across processes; ``acquire`` returns the seconds waited. Not re-entrant."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._waiting_path = path + ".waiting"
        self._reading_path = path + ".reading"
        self._fd: int | None = None
        self._courtesy_until = 0.0

    def acquire(self, timeout: float, *, reader: bool = False) -> float:
        """Take the lock, waiting at most ``timeout`` s (``reader``: say so to the holder while waiting)."""
        start = time.monotonic()
        pause = self._courtesy_until - start
        if pause > 0:
            time.sleep(pause)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not self._wait_in_line(fd, max(0.0, timeout - (time.monotonic() - start)), reader):
                raise LockTimeout(self.path) from None  # the helper thread owns fd now
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return time.monotonic() - start

    def _wait_in_line(self, fd: int, timeout: float, reader: bool) -> bool:
        flags = [os.open(self._waiting_path, os.O_RDWR | os.O_CREAT, 0o644)]
        try:
            if reader:
                flags.append(os.open(self._reading_path, os.O_RDWR | os.O_CREAT, 0o644))
            for flag in flags:
                fcntl.flock(flag, fcntl.LOCK_SH)  # "someone (a reader) waits"; dropped when closed
            return _flock_within(fd, timeout)
        finally:
            for flag in flags:
                os.close(flag)

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        os.close(fd)  # closing the descriptor releases the flock
        if self.others_waiting():
            self._courtesy_until = time.monotonic() + COURTESY_SECONDS

    def forget(self) -> None:
        """In a forked child: close the inherited descriptor without releasing the parent's lock."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # the lock stays held by the parent's copy of the descriptor

    def others_waiting(self) -> bool:
        """Whether another process (or another ``TurnLock``) waits for this lock now."""
        return _flagged(self._waiting_path)

    def readers_waiting(self) -> bool:
        """Whether one of those waiting is a reader."""
        return _flagged(self._reading_path)


def _flagged(path: str) -> bool:
    """Whether someone holds a shared lock on ``path``."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def _flock_within(fd: int, timeout: float) -> bool:
    """Block on ``flock(fd)`` for at most ``timeout`` s; on False the fd is closed later by the helper."""
    got_it = threading.Event()
    guard = threading.Lock()
    abandoned = False

    def wait() -> None:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with guard:
            if abandoned:
                os.close(fd)  # the caller gave up: let the next process in
                return
            got_it.set()

    threading.Thread(target=wait, name="dsagent-store-lock", daemon=True).start()
    if got_it.wait(timeout):
        return True
    with guard:
        if got_it.is_set():
            return True
        abandoned = True
    return False
