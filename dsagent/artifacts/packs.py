"""Artifact bytes in append-only pack files: ``<workspace>/blobs/packs/000001.pack``.

No SQL here; the store's ``blobs`` table says where each sha256's bytes are
(pack number and offset) and this module reads and appends the bytes.

Why packs (measured, see ``docs/architecture.md``): a cell's transaction
used to commit its image into a second DuckDB file, which cost that file's
attach, a write-ahead-log commit and a checkpoint that rewrote whole 256 KB
blocks, 4 of the transaction's 8 fsyncs. A file per blob costs a file fsync
plus a directory fsync each. A pack takes all the bytes of one transaction
in one ``pwrite`` per blob and **one** ``fdatasync``, done before the
DuckDB commit that references them, so a committed row always finds its
bytes after ``kill -9`` or a power cut.

Every record is ``MAGIC | sha256 (32 bytes) | length (8 bytes) | data``; a
read checks the header and the hash, so a stale offset can never return the
wrong bytes. A writer killed after its append but before its commit leaves
unreferenced records (or a torn tail); nothing points to them, the next
append goes after them, and ``gc`` copies the referenced records into a
fresh pack and deletes the old one.

**Appends happen outside the workspace lock** (issue 16 part 2, fourth
step): each process appends to a pack it holds an exclusive ``flock`` on
(its "own" pack, kept open while the process lives), so a transaction's
bytes are hashed, written and synced *before* it waits for the database,
and the lock's holder only inserts rows. Several processes therefore write
several packs at once. ``gc`` (under the workspace lock) repacks and deletes
only packs it can ``flock`` itself: a pack another live process appends to
is left for a later gc, and this process gives its own back first when no
transaction of its has bytes there that are not committed yet
(``in_flight``). A process that finds a pack by name re-checks after its
``flock`` that the name still leads to the same file (gc may have deleted
it meanwhile).
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
import threading
import weakref
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from dsagent.errors import StorageFull, StoreCorrupt

__all__ = ["BlobPacks", "PACK_MAX_BYTES", "HEADER_BYTES"]

MAGIC = b"DSB1"
_HEADER = struct.Struct(">4s32sQ")
HEADER_BYTES = _HEADER.size
#: a pack is closed (and never appended to again) once it passes this size
PACK_MAX_BYTES = 256 << 20


class BlobPacks:
    """The folder of pack files. ``append`` needs no workspace lock; ``remove`` and gc's ``fresh_writer`` run under it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._guard = threading.Lock()  # one append at a time per process (offsets come from the file's end)
        self._own: _PackHandle | None = None
        self._in_flight = 0  # appends to the own pack whose transaction has not ended yet
        _ALL.add(self)

    def path(self, pack: int) -> Path:
        return self.root / f"{pack:06d}.pack"

    def numbers(self) -> list[int]:
        if not self.root.is_dir():
            return []
        return sorted(int(p.stem) for p in self.root.glob("*.pack") if p.stem.isdigit())

    def total_bytes(self) -> int:
        total = 0
        for n in self.numbers():
            try:
                total += self.path(n).stat().st_size
            except FileNotFoundError:
                pass  # removed by a gc meanwhile
        return total

    def append(self, blobs: dict[str, bytes]) -> dict[str, tuple[int, int]]:
        """Append ``blobs`` (sha256 hex -> bytes) durably to this process's pack; returns sha256 -> (pack, offset).

        One ``fdatasync`` for all of them; no workspace lock needed. The caller must call ``settle()``
        once the transaction that references them has committed or rolled back.
        """
        if not blobs:
            return {}
        with self._guard:
            try:
                if self._own is None or self._own.size() >= PACK_MAX_BYTES:
                    if self._own is not None:
                        self._own.close()
                        self._own = None
                    self._own = _PackHandle.take(self)
                placed = self._own.append(blobs)
            except OSError as exc:
                full = _storage_error(exc, self.root, blobs)
                if full is None:
                    raise
                raise full from exc
            self._in_flight += 1
            return placed

    def settle(self) -> None:
        """A transaction whose bytes ``append`` placed has ended (committed or rolled back)."""
        with self._guard:
            self._in_flight = max(0, self._in_flight - 1)

    def give_back_idle(self) -> None:
        """Let go of the own pack unless uncommitted bytes are in it (gc calls this, so it may repack it)."""
        with self._guard:
            if self._own is not None and self._in_flight == 0:
                self._own.close()
                self._own = None

    @contextmanager
    def fresh_writer(self) -> Iterator["_PackHandle"]:
        """A pack of its own, new, for gc's copies (``append`` on it; a full one is followed by another)."""
        handle = _PackHandle.take(self, fresh=True)
        try:
            yield handle
        finally:
            handle.close()

    def try_claim(self, pack: int) -> int | None:
        """An fd holding ``pack``'s flock, or None while another process (or this one's own writer) appends to it."""
        if self._own is not None and self._own.number == pack:
            return None
        try:
            fd = os.open(self.path(pack), os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        return fd

    def read(self, pack: int, offset: int, sha256: str) -> bytes:
        path = self.path(pack)
        try:
            with open(path, "rb") as handle:
                handle.seek(offset)
                head = handle.read(HEADER_BYTES)
                if len(head) == HEADER_BYTES:
                    magic, digest, length = _HEADER.unpack(head)
                    if magic == MAGIC and digest.hex() == sha256:
                        data = handle.read(length)
                        if len(data) == length:
                            from dsagent.artifacts.blobfiles import sha256_hex

                            if sha256_hex(data) == sha256:
                                return data
        except FileNotFoundError:
            pass
        raise StoreCorrupt(
            f"the bytes of blob {sha256[:12]}... are missing or damaged in {path} at offset {offset}",
            hint="the blobs folder was changed by hand; restore it from a backup",
            path=str(path),
        )

    def records(self, pack: int) -> Iterator[tuple[int, str, int]]:
        """(offset, sha256, length) of each whole record, in order; stops at a torn or foreign tail."""
        path = self.path(pack)
        size = path.stat().st_size
        with open(path, "rb") as handle:
            offset = 0
            while offset + HEADER_BYTES <= size:
                handle.seek(offset)
                magic, digest, length = _HEADER.unpack(handle.read(HEADER_BYTES))
                if magic != MAGIC or offset + HEADER_BYTES + length > size:
                    return
                yield offset, digest.hex(), length
                offset += HEADER_BYTES + length

    def read_record(self, pack: int, offset: int, length: int) -> bytes:
        with open(self.path(pack), "rb") as handle:
            handle.seek(offset + HEADER_BYTES)
            return handle.read(length)

    def remove(self, claimed: dict[int, int]) -> None:
        """Delete packs (number -> the fd of ``try_claim`` that holds its flock; closed here)."""
        for pack, fd in claimed.items():
            try:
                self.path(pack).unlink(missing_ok=True)  # while flocked: nobody can have taken it meanwhile
            finally:
                os.close(fd)
        if claimed:
            _fsync_dir(self.root)

    def close(self) -> None:
        """Let go of this process's pack (``Store.close``)."""
        with self._guard:
            if self._own is not None:
                self._own.close()
                self._own = None

    def _forget_after_fork(self) -> None:
        # the child shares the parent's flock through the inherited descriptor: never append with it
        # (closing the child's copy leaves the parent's lock in place)
        self._guard = threading.Lock()
        if self._own is not None:
            self._own.close()
            self._own = None
        self._in_flight = 0


class _PackHandle:
    """One pack file, open and exclusively flocked by this process, appended at its end."""

    def __init__(self, number: int, fd: int) -> None:
        self.number = number
        self.fd = fd

    @classmethod
    def take(cls, packs: BlobPacks, *, fresh: bool = False) -> "_PackHandle":
        """An existing pack with room that no other process appends to (the newest first), else a new one."""
        packs.root.mkdir(parents=True, exist_ok=True)
        numbers = packs.numbers()
        if not fresh:
            for number in reversed(numbers[-4:]):
                fd = _open_flocked(packs.path(number))
                if fd is not None:
                    if os.fstat(fd).st_size < PACK_MAX_BYTES:
                        return cls(number, fd)
                    os.close(fd)
        number = (numbers[-1] if numbers else 0) + 1
        while True:
            try:
                fd = os.open(packs.path(number), os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                number += 1  # another process made this one just now
                continue
            fcntl.flock(fd, fcntl.LOCK_EX)  # new: nobody else can hold it yet
            _fsync_dir(packs.root)  # the new file's name must survive a power cut too
            return cls(number, fd)

    def size(self) -> int:
        return os.fstat(self.fd).st_size

    def append(self, blobs: dict[str, bytes]) -> dict[str, tuple[int, int]]:
        start = offset = self.size()
        placed: dict[str, tuple[int, int]] = {}
        try:
            for sha, data in blobs.items():
                record = _HEADER.pack(MAGIC, bytes.fromhex(sha), len(data)) + data
                _pwrite_all(self.fd, record, offset)
                placed[sha] = (self.number, offset)
                offset += len(record)
            os.fdatasync(self.fd)
        except BaseException:
            _truncate_quietly(self.fd, start)  # a failed append leaves no half record behind
            raise
        return placed

    def close(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)  # releases the flock

    def __del__(self) -> None:
        # a Store dropped without close(): its pack must not stay flocked (and its fd open) until exit
        self.close()


def _open_flocked(path: Path) -> int | None:
    """``path`` opened read-write with an exclusive flock, or None when another holds it or it is gone."""
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        # gc deletes a pack while holding its flock: the name may lead elsewhere (or nowhere) by now
        if os.fstat(fd).st_ino == os.stat(path).st_ino:
            return fd
    except (BlockingIOError, FileNotFoundError):
        pass
    os.close(fd)
    return None


def _storage_error(exc: OSError, root: Path, blobs: dict[str, bytes]) -> StorageFull | None:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        size = sum(len(d) for d in blobs.values())
        return StorageFull(
            f"the disk is full: cannot save {size} bytes of artifacts to {root}",
            hint="free disk space (or run `dsagent gc --older-than 30d`) and run again; earlier data is intact",
            path=str(root),
        )
    return None


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


def _truncate_quietly(fd: int, size: int) -> None:
    try:
        os.ftruncate(fd, size)
    except OSError:
        pass  # records past ``size`` are unreferenced anyway


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_ALL: "weakref.WeakSet[BlobPacks]" = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for packs in list(_ALL):
        packs._forget_after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)
