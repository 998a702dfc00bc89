"""envd of the loopback E2B server: files over HTTP and the ``filesystem.Filesystem`` Connect service.

Written here from envd's API spec in e2b-dev/E2B (``spec/envd/envd.yaml``,
``spec/envd/filesystem/filesystem.proto``) and the Python SDK's tests of it,
not copied. Paths are sandbox paths: absolute, or relative to the home of the
user the request names (``username`` query parameter, or the ``Authorization:
Basic <user:>`` header of RPCs; ``user`` by default, whose home is
``/home/user``; ``root``'s is ``/root``).

- ``GET /files?path=``: the bytes (404 for a missing path, 400 for a folder);
- ``POST /files``: ``application/octet-stream`` (``path`` required; gzip if
  ``Content-Encoding: gzip``) or ``multipart/form-data`` with one ``file``
  part per file, each written at its part's file name (relative names from the
  user's home), or at ``path`` when the request names one and sends one file;
  parents are made; the answer lists what was written;
- ``Stat``, ``MakeDir`` (ALREADY_EXISTS if there), ``ListDir`` (``depth``),
  ``Move`` (NOT_FOUND for a missing source), ``Remove`` (a missing path is
  fine), ``WatchDir`` (a start event, then create/write/remove/rename/chmod
  events from inotify, names relative to the watched folder; NOT_FOUND for a
  missing folder, INVALID_ARGUMENT for a file) and the polled watchers
  (``CreateWatcher``/``GetWatcherEvents``/``RemoveWatcher``).

Not imitated: file metadata (``X-Metadata-*`` headers and xattrs), file owners
(everything belongs to this machine's user), signed URLs, ``/files/compose``.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import gzip
import operator
import os
import shutil
import stat as stat_module
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from connectrpc.code import Code
from connectrpc.errors import ConnectError
from e2b.envd.filesystem import filesystem_pb
from e2b.envd.filesystem.filesystem_connect import Filesystem
from inotify_simple import INotify
from inotify_simple import flags as inotify_flags
from protobuf import Oneof
from protobuf.wkt.google.protobuf.timestamp_pb import Timestamp
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from dsagent.testing.e2b_view import KERNEL_HOME, SANDBOX_HOME

if TYPE_CHECKING:
    from dsagent.testing.e2b_server import E2BLoopbackServer

__all__ = ["FilesystemService", "download", "rpc_user", "upload", "user_home"]

#: inotify events a watch asks for, and the envd event type each becomes
_EVENTS = (
    (inotify_flags.CREATE | inotify_flags.MOVED_TO, filesystem_pb.EventType.CREATE),
    (inotify_flags.MODIFY, filesystem_pb.EventType.WRITE),
    (inotify_flags.DELETE | inotify_flags.DELETE_SELF, filesystem_pb.EventType.REMOVE),
    (inotify_flags.MOVED_FROM, filesystem_pb.EventType.RENAME),
    (inotify_flags.ATTRIB, filesystem_pb.EventType.CHMOD),
)
_WATCH_MASK = functools.reduce(operator.or_, (mask for mask, _ in _EVENTS))


def user_home(user: str | None) -> str:
    return KERNEL_HOME if user == "root" else SANDBOX_HOME


def rpc_user(ctx: Any) -> str | None:
    header = ctx.request_headers.get("authorization") or ""
    if not header.lower().startswith("basic "):
        return None
    try:
        return base64.b64decode(header[6:]).decode().split(":", 1)[0] or None
    except ValueError:
        return None


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"code": status, "message": message}, status_code=status)


async def download(server: E2BLoopbackServer, request: Request) -> Response:
    path = request.query_params.get("path")
    if not path:
        return _error(400, "path is required")
    target = server.view.host_path(path, user_home(request.query_params.get("username")))
    if not target.exists():
        return _error(404, f"path '{path}' does not exist")
    if target.is_dir():
        return _error(400, f"path '{path}' is a directory")
    return Response(await asyncio.to_thread(target.read_bytes), media_type="application/octet-stream")


async def upload(server: E2BLoopbackServer, request: Request) -> Response:
    home = user_home(request.query_params.get("username"))
    path = request.query_params.get("path")
    kind = request.headers.get("content-type", "").split(";")[0].strip()
    if kind == "application/octet-stream":
        if not path:
            return _error(400, "path is required for an application/octet-stream upload")
        data = await request.body()
        if request.headers.get("content-encoding", "").lower() == "gzip":
            data = gzip.decompress(data)
        files = [(path, data)]
    elif kind == "multipart/form-data":
        form = await request.form(max_files=100_000)
        parts = [part for _, part in form.multi_items() if not isinstance(part, str)]
        if not parts:
            return _error(400, "the multipart upload has no file part")
        if path and len(parts) == 1:
            files = [(path, await parts[0].read())]
        else:
            files = [(part.filename or "", await part.read()) for part in parts]
        await form.close()
    else:
        return _error(400, f"unsupported content type {kind!r}: send application/octet-stream or multipart/form-data")
    written = []
    for name, data in files:
        if not name:
            return _error(400, "a file part has no file name")
        target = server.view.host_path(name, home)
        if target.is_dir():
            return _error(400, f"path '{name}' is a directory")
        target.parent.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(target.write_bytes, data)
        written.append({"name": target.name, "type": "file", "path": server.view.sandbox_path(target)})
    return JSONResponse(written)


class FilesystemService(Filesystem):
    """envd's ``filesystem.Filesystem`` service."""

    def __init__(self, server: E2BLoopbackServer) -> None:
        self.server = server
        self._watchers: dict[str, _Watcher] = {}

    def _target(self, path: str, ctx: Any) -> Path:
        return self.server.view.host_path(path, user_home(rpc_user(ctx)))

    def entry(self, path: Path) -> filesystem_pb.EntryInfo:
        st = path.lstat()
        if stat_module.S_ISLNK(st.st_mode):
            kind = filesystem_pb.FileType.SYMLINK
        elif stat_module.S_ISDIR(st.st_mode):
            kind = filesystem_pb.FileType.DIRECTORY
        else:
            kind = filesystem_pb.FileType.FILE
        return filesystem_pb.EntryInfo(
            name=path.name,
            type=kind,
            path=self.server.view.sandbox_path(path.parent).rstrip("/") + "/" + path.name,
            size=st.st_size,
            mode=st.st_mode & 0o7777,
            permissions=stat_module.filemode(st.st_mode),
            owner="user",
            group="user",
            modified_time=Timestamp.from_datetime(datetime.fromtimestamp(st.st_mtime, UTC)),
            symlink_target=os.readlink(path) if kind == filesystem_pb.FileType.SYMLINK else None,
        )

    async def stat(self, request: filesystem_pb.StatRequest, ctx: Any) -> filesystem_pb.StatResponse:
        target = self._target(request.path, ctx)
        if not target.exists() and not target.is_symlink():
            raise ConnectError(Code.NOT_FOUND, f"path '{request.path}' does not exist")
        return filesystem_pb.StatResponse(entry=self.entry(target))

    async def make_dir(self, request: filesystem_pb.MakeDirRequest, ctx: Any) -> filesystem_pb.MakeDirResponse:
        target = self._target(request.path, ctx)
        if target.exists():
            raise ConnectError(Code.ALREADY_EXISTS, f"path '{request.path}' already exists")
        target.mkdir(parents=True)
        return filesystem_pb.MakeDirResponse(entry=self.entry(target))

    async def move(self, request: filesystem_pb.MoveRequest, ctx: Any) -> filesystem_pb.MoveResponse:
        source, destination = self._target(request.source, ctx), self._target(request.destination, ctx)
        if not source.exists() and not source.is_symlink():
            raise ConnectError(Code.NOT_FOUND, f"path '{request.source}' does not exist")
        destination.parent.mkdir(parents=True, exist_ok=True)
        source.rename(destination)
        return filesystem_pb.MoveResponse(entry=self.entry(destination))

    async def remove(self, request: filesystem_pb.RemoveRequest, ctx: Any) -> filesystem_pb.RemoveResponse:
        target = self._target(request.path, ctx)
        if target.is_dir() and not target.is_symlink():
            await asyncio.to_thread(shutil.rmtree, target)
        elif target.exists() or target.is_symlink():
            target.unlink()
        return filesystem_pb.RemoveResponse()

    async def list_dir(self, request: filesystem_pb.ListDirRequest, ctx: Any) -> filesystem_pb.ListDirResponse:
        base = self._target(request.path, ctx)
        if not base.exists():
            raise ConnectError(Code.NOT_FOUND, f"path '{request.path}' does not exist")
        if not base.is_dir():
            raise ConnectError(Code.INVALID_ARGUMENT, f"path '{request.path}' is not a directory")
        entries: list[filesystem_pb.EntryInfo] = []

        def walk(folder: Path, level: int) -> None:
            for child in sorted(folder.iterdir()):
                entries.append(self.entry(child))
                if child.is_dir() and not child.is_symlink() and (request.depth == 0 or level < request.depth):
                    walk(child, level + 1)

        await asyncio.to_thread(walk, base, 1)
        return filesystem_pb.ListDirResponse(entries=entries)

    def _watcher(self, path: str, recursive: bool, include_entry: bool, ctx: Any) -> _Watcher:
        folder = self._target(path, ctx)
        if not folder.exists():
            raise ConnectError(Code.NOT_FOUND, f"path '{path}' does not exist")
        if not folder.is_dir():
            raise ConnectError(Code.INVALID_ARGUMENT, f"path '{path}' is not a directory")
        return _Watcher(self, folder, recursive, include_entry)

    async def watch_dir(self, request: filesystem_pb.WatchDirRequest, ctx: Any) -> AsyncIterator[filesystem_pb.WatchDirResponse]:
        watcher = self._watcher(request.path, request.recursive, request.include_entry, ctx)
        interval = float(ctx.request_headers.get("keepalive-ping-interval") or 30)
        try:
            yield filesystem_pb.WatchDirResponse(event=Oneof("start", filesystem_pb.WatchDirResponse.StartEvent()))
            while True:
                try:
                    event = await asyncio.wait_for(watcher.queue.get(), interval)
                except TimeoutError:
                    yield filesystem_pb.WatchDirResponse(event=Oneof("keepalive", filesystem_pb.WatchDirResponse.KeepAlive()))
                    continue
                yield filesystem_pb.WatchDirResponse(event=Oneof("filesystem", event))
        finally:
            watcher.close()

    async def create_watcher(self, request: filesystem_pb.CreateWatcherRequest, ctx: Any) -> filesystem_pb.CreateWatcherResponse:
        watcher = self._watcher(request.path, request.recursive, request.include_entry, ctx)
        watcher_id = uuid.uuid4().hex
        self._watchers[watcher_id] = watcher
        return filesystem_pb.CreateWatcherResponse(watcher_id=watcher_id)

    async def get_watcher_events(self, request: filesystem_pb.GetWatcherEventsRequest, ctx: Any) -> filesystem_pb.GetWatcherEventsResponse:
        watcher = self._watchers.get(request.watcher_id)
        if watcher is None:
            raise ConnectError(Code.NOT_FOUND, f"watcher '{request.watcher_id}' not found")
        events = []
        while not watcher.queue.empty():
            events.append(watcher.queue.get_nowait())
        return filesystem_pb.GetWatcherEventsResponse(events=events)

    async def remove_watcher(self, request: filesystem_pb.RemoveWatcherRequest, ctx: Any) -> filesystem_pb.RemoveWatcherResponse:
        watcher = self._watchers.pop(request.watcher_id, None)
        if watcher is None:
            raise ConnectError(Code.NOT_FOUND, f"watcher '{request.watcher_id}' not found")
        watcher.close()
        return filesystem_pb.RemoveWatcherResponse()

    def close(self) -> None:
        for watcher in self._watchers.values():
            watcher.close()
        self._watchers.clear()


class _Watcher:
    """inotify watches on a folder (and, if recursive, on every folder below it, including new ones), as envd events."""

    def __init__(self, service: FilesystemService, folder: Path, recursive: bool, include_entry: bool) -> None:
        self.service = service
        self.folder = folder
        self.recursive = recursive
        self.include_entry = include_entry
        self.queue: asyncio.Queue[filesystem_pb.FilesystemEvent] = asyncio.Queue()
        self._inotify = INotify(nonblocking=True)
        self._folders: dict[int, Path] = {}
        self._add(folder)
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._inotify.fileno(), self._read)

    def _add(self, folder: Path) -> None:
        self._folders[self._inotify.add_watch(folder, _WATCH_MASK)] = folder
        if self.recursive:
            for child in folder.iterdir():
                if child.is_dir() and not child.is_symlink():
                    self._add(child)

    def _read(self) -> None:
        for event in self._inotify.read(timeout=0):
            folder = self._folders.get(event.wd)
            if folder is None:
                continue
            path = folder / event.name if event.name else folder
            if event.mask & inotify_flags.ISDIR and event.mask & inotify_flags.CREATE and self.recursive and path.is_dir():
                self._add(path)
            kind = next((k for mask, k in _EVENTS if event.mask & mask), None)
            if kind is None:
                continue
            name = path.relative_to(self.folder).as_posix() if path != self.folder else ""
            entry = self.service.entry(path) if self.include_entry and (path.exists() or path.is_symlink()) else None
            self.queue.put_nowait(filesystem_pb.FilesystemEvent(name=name, type=kind, entry=entry))

    def close(self) -> None:
        try:
            self._loop.remove_reader(self._inotify.fileno())
        except (ValueError, RuntimeError):
            pass
        self._inotify.close()
