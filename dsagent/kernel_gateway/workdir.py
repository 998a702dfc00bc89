"""File access inside a session's work dir on this machine, never outside it."""

from __future__ import annotations

import os
from pathlib import Path

from dsagent.errors import FileAccessError
from dsagent.kernel_gateway.models import FileInfo

__all__ = ["WorkDir"]


class WorkDir:
    """A folder that paths are resolved against; ``..`` and absolute paths cannot escape it."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()

    def resolve(self, path: str) -> Path:
        target = (self.root / path).resolve()
        if target != self.root and self.root not in target.parents:
            raise FileAccessError(
                f"path {path!r} is outside the session's work dir {self.root}",
                hint="use a path relative to the work dir, without '..'",
                path=path,
            )
        return target

    def write(self, path: str, data: bytes) -> None:
        target = self.resolve(path)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.dsagent-upload")
            tmp.write_bytes(data)
            os.replace(tmp, target)  # readers never see half a file
        except OSError as exc:
            raise FileAccessError(f"cannot write {path!r}: {exc.strerror}", hint="check the path and free space", path=path) from exc

    def read(self, path: str) -> bytes:
        target = self.resolve(path)
        try:
            return target.read_bytes()
        except FileNotFoundError:
            raise FileAccessError(
                f"no file {path!r} in the session's work dir", hint="list_files() shows what is there", path=path
            ) from None
        except OSError as exc:
            raise FileAccessError(f"cannot read {path!r}: {exc.strerror}", hint="check the path", path=path) from exc

    def list(self, path: str = ".", *, recursive: bool = False) -> list[FileInfo]:
        base = self.resolve(path)
        if not base.is_dir():
            raise FileAccessError(f"{path!r} is not a folder in the session's work dir", hint="pass a folder", path=path)
        entries: list[FileInfo] = []
        walker = os.walk(base) if recursive else [(str(base), *_split(base))]
        for folder, dirs, files in walker:
            for name in dirs + files:
                full = Path(folder) / name
                try:
                    st = full.lstat()
                except OSError:
                    continue  # vanished while listing
                rel = full.relative_to(self.root).as_posix()
                entries.append(FileInfo(rel, st.st_size, st.st_mtime, is_dir=name in dirs))
        return sorted(entries, key=lambda e: e.path)


def _split(base: Path) -> tuple[list[str], list[str]]:
    dirs, files = [], []
    for entry in os.scandir(base):
        (dirs if entry.is_dir(follow_symlinks=False) else files).append(entry.name)
    return dirs, files
