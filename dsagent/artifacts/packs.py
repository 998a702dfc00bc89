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
wrong bytes. Appends happen only under the store's file lock (one writer at
a time), at the file's current end. A writer killed after its append but
before its commit leaves unreferenced records (or a torn tail); nothing
points to them, the next append goes after them, and ``gc`` copies the
referenced records into a fresh pack and deletes the old one.
"""

from __future__ import annotations

import errno
import os
import struct
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
    """The folder of pack files; every method is called with the store's file lock held."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, pack: int) -> Path:
        return self.root / f"{pack:06d}.pack"

    def numbers(self) -> list[int]:
        if not self.root.is_dir():
            return []
        return sorted(int(p.stem) for p in self.root.glob("*.pack") if p.stem.isdigit())

    def total_bytes(self) -> int:
        return sum(self.path(n).stat().st_size for n in self.numbers())

    def append(self, blobs: dict[str, bytes], *, new_pack: bool = False) -> dict[str, tuple[int, int]]:
        """Append ``blobs`` (sha256 hex -> bytes) durably; returns sha256 -> (pack, offset).

        One ``fdatasync`` for all of them. ``new_pack`` starts a fresh pack (gc uses it).
        """
        if not blobs:
            return {}
        numbers = self.numbers()
        pack = numbers[-1] if numbers else 1
        if new_pack and numbers:
            pack += 1
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            path = self.path(pack)
            if path.exists() and path.stat().st_size >= PACK_MAX_BYTES:
                pack += 1
                path = self.path(pack)
            created = not path.exists()
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                start = offset = os.fstat(fd).st_size
                placed: dict[str, tuple[int, int]] = {}
                try:
                    for sha, data in blobs.items():
                        record = _HEADER.pack(MAGIC, bytes.fromhex(sha), len(data)) + data
                        _pwrite_all(fd, record, offset)
                        placed[sha] = (pack, offset)
                        offset += len(record)
                    os.fdatasync(fd)
                except BaseException:
                    _truncate_quietly(fd, start)  # a failed append leaves no half record behind
                    raise
            finally:
                os.close(fd)
            if created:
                _fsync_dir(self.root)  # the new file's name must survive a power cut too
            return placed
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                size = sum(len(d) for d in blobs.values())
                raise StorageFull(
                    f"the disk is full: cannot save {size} bytes of artifacts to {self.root}",
                    hint="free disk space (or run `dsagent gc --older-than 30d`) and run again; earlier data is intact",
                    path=str(self.root),
                ) from exc
            raise

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

    def remove(self, packs: list[int]) -> None:
        for pack in packs:
            self.path(pack).unlink(missing_ok=True)
        if packs:
            _fsync_dir(self.root)


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
