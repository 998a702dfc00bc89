"""Content-addressed files for artifact bytes above the inline limit: ``blobs/ab/cdef...``.

No SQL here; the store decides which bytes go to files and references them
by sha256. Writes are atomic (temp file, fsync, rename), so a reader or a
crash never leaves half a blob under its final name.
"""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path
from typing import Iterator

from dsagent.errors import StorageFull, StoreCorrupt

__all__ = ["BlobFiles", "sha256_hex"]


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_file_atomically(path: Path, data: bytes) -> None:
    """The one place blob bytes reach the disk (tests inject ENOSPC here)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk must not keep half a blob around
        raise


class BlobFiles:
    """The folder of large blobs; names are the sha256, split after two characters."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, sha256: str) -> Path:
        return self.root / sha256[:2] / sha256[2:]

    def exists(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def write(self, sha256: str, data: bytes) -> None:
        target = self.path(sha256)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            write_file_atomically(target, data)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise StorageFull(
                    f"the disk is full: cannot save a {len(data)} byte artifact to {target.parent}",
                    hint="free disk space (or run `dsagent gc --older-than 30d`) and run again; earlier data is intact",
                    path=str(target),
                ) from exc
            raise

    def read(self, sha256: str) -> bytes:
        target = self.path(sha256)
        try:
            data = target.read_bytes()
        except FileNotFoundError:
            raise StoreCorrupt(
                f"the bytes of blob {sha256[:12]}... are missing: {target} does not exist",
                hint="the blobs folder was changed by hand; restore it from a backup",
                path=str(target),
            ) from None
        if sha256_hex(data) != sha256:
            raise StoreCorrupt(
                f"blob file {target} does not match its sha256", hint="restore the file from a backup", path=str(target)
            )
        return data

    def remove(self, sha256: str) -> None:
        self.path(sha256).unlink(missing_ok=True)

    def all_hashes(self) -> Iterator[str]:
        """sha256 of every blob file present (temp files are skipped)."""
        if not self.root.is_dir():
            return
        for folder in self.root.iterdir():
            if folder.is_dir() and len(folder.name) == 2:
                for file in folder.iterdir():
                    if not file.name.startswith("."):
                        yield folder.name + file.name

    def remove_temp_files(self) -> int:
        """Delete temp files left by writers that were killed mid-write."""
        removed = 0
        if self.root.is_dir():
            for tmp in self.root.glob("*/.*.tmp"):
                tmp.unlink(missing_ok=True)
                removed += 1
        return removed
