"""Files of a remote session: through the server's contents API, or through the kernel itself.

Jupyter Server has ``/api/contents``; Kernel Gateway and Enterprise Gateway do
not, so there the kernel reads and writes its own files. Kernel-side file work
is one silent request whose result comes back as a ``user_expression``: it
runs in a throwaway namespace, adds nothing to the user's variables and does
not advance the execution count.
"""

from __future__ import annotations

import ast
import base64
import json
import posixpath
import urllib.parse
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, Protocol

from dsagent.errors import FileAccessError
from dsagent.kernel_gateway.models import FileInfo
from dsagent.kernel_gateway.remote_http import KernelServerClient

__all__ = ["KERNEL_FILE_OPS", "ContentsFiles", "KernelFiles", "RemoteFiles", "clean_path"]

#: (expression) -> the reply's user_expression entry; provided by the session
Evaluate = Callable[[str], Awaitable[dict[str, Any]]]


class RemoteFiles(Protocol):
    async def upload(self, path: str, data: bytes) -> None: ...
    async def download(self, path: str) -> bytes: ...
    async def list_files(self, path: str = ".", *, recursive: bool = False) -> list[FileInfo]: ...


def clean_path(path: str) -> str:
    """``path`` normalized and relative to the work dir ("" for the work dir itself); never escapes it."""
    norm = posixpath.normpath(path.replace("\\", "/")) if path else "."
    if norm.startswith("/") or norm == ".." or norm.startswith("../"):
        raise FileAccessError(
            f"path {path!r} is outside the session's work dir",
            hint="use a path relative to the work dir, without '..'",
            path=path,
        )
    return "" if norm == "." else norm


class ContentsFiles:
    """Files under ``base`` (a path relative to the server's root dir) through ``/api/contents``.

    The server hides dot-files from this API, so they are not listed here.
    """

    def __init__(self, client: KernelServerClient, base: str) -> None:
        self.client = client
        self.base = base.strip("/")

    def _url(self, rel: str) -> str:
        return "contents/" + urllib.parse.quote(posixpath.join(self.base, rel).strip("/"))

    async def ensure_dir(self, rel: str = "") -> None:
        """Create ``rel`` (and its parents) under the base; existing folders are fine."""
        parts = [p for p in posixpath.join(self.base, rel).split("/") if p]
        for i in range(1, len(parts) + 1):
            await self.client.request("PUT", "contents/" + urllib.parse.quote("/".join(parts[:i])), json={"type": "directory"})

    async def upload(self, path: str, data: bytes) -> None:
        rel = clean_path(path)
        if not rel:
            raise FileAccessError("cannot write to the work dir itself", hint="pass a file name", path=path)
        await self.ensure_dir(posixpath.dirname(rel))
        body = {"type": "file", "format": "base64", "content": base64.b64encode(data).decode()}
        await self.client.request("PUT", self._url(rel), json=body)

    async def download(self, path: str) -> bytes:
        rel = clean_path(path)
        response = await self.client.request("GET", self._url(rel), ok_missing=True, params={"type": "file", "format": "base64", "content": "1"})
        if response.status_code == 404:
            raise FileAccessError(f"no file {path!r} in the session's work dir", hint="list_files() shows what is there", path=path)
        model = response.json()
        if model.get("format") == "base64":
            return base64.b64decode(model["content"])
        return str(model.get("content", "")).encode()

    async def list_files(self, path: str = ".", *, recursive: bool = False) -> list[FileInfo]:
        rel = clean_path(path)
        entries: list[FileInfo] = []
        pending = [rel]
        while pending:
            folder = pending.pop()
            response = await self.client.request("GET", self._url(folder), ok_missing=True, params={"content": "1"})
            model = response.json() if response.status_code == 200 else {}
            if model.get("type") != "directory":
                raise FileAccessError(f"{path!r} is not a folder in the session's work dir", hint="pass a folder", path=path)
            for item in model.get("content") or []:
                item_rel = posixpath.join(folder, item["name"])
                is_dir = item["type"] == "directory"
                entries.append(FileInfo(item_rel, int(item.get("size") or 0), _timestamp(item.get("last_modified")), is_dir=is_dir))
                if is_dir and recursive:
                    pending.append(item_rel)
        return sorted(entries, key=lambda e: e.path)


def _timestamp(iso: str | None) -> float:
    return datetime.fromisoformat(iso).timestamp() if iso else 0.0


#: run by the kernel in a fresh namespace; ``a`` holds the arguments, ``result`` the JSON answer
KERNEL_FILE_OPS = """
import base64, json, os
root = os.path.realpath(a['root'])
def inside(p):
    t = os.path.realpath(os.path.join(root, p))
    if t != root and not t.startswith(root.rstrip(os.sep) + os.sep):
        raise PermissionError('outside the work dir: ' + p)
    return t
if a['op'] == 'upload':
    t = inside(a['path'])
    os.makedirs(os.path.dirname(t), exist_ok=True)
    tmp = os.path.join(os.path.dirname(t), '.' + os.path.basename(t) + '.dsagent-upload')
    with open(tmp, 'wb') as f:
        f.write(base64.b64decode(a['data']))
    os.replace(tmp, t)
    result = 'null'
elif a['op'] == 'download':
    with open(inside(a['path']), 'rb') as f:
        result = json.dumps(base64.b64encode(f.read()).decode())
else:
    base = inside(a['path'])
    if not os.path.isdir(base):
        raise NotADirectoryError('not a folder: ' + a['path'])
    out = []
    for folder, dirs, files in (os.walk(base) if a['recursive'] else [next(os.walk(base))]):
        for name in dirs + files:
            full = os.path.join(folder, name)
            try:
                st = os.lstat(full)
            except OSError:
                continue
            out.append([os.path.relpath(full, root).replace(os.sep, '/'), st.st_size, st.st_mtime, name in dirs])
    result = json.dumps(out)
"""


class KernelFiles:
    """Files under ``root`` (an absolute path as the kernel sees it), read and written by the kernel."""

    def __init__(self, evaluate: Evaluate, root: str) -> None:
        self.evaluate = evaluate
        self.root = root

    async def _run(self, path: str, **args: Any) -> Any:
        args.update(root=self.root, path=path)
        expr = f"(lambda ns: (exec({KERNEL_FILE_OPS!r}, ns), ns['result'])[1])({{'a': {args!r}}})"
        value = await self.evaluate(expr)
        if value.get("status") != "ok":
            ename, evalue = value.get("ename", "Error"), value.get("evalue", "")
            missing = ename in ("FileNotFoundError", "NotADirectoryError")
            raise FileAccessError(
                f"cannot {args['op']} {path!r} in the session's work dir: {ename}: {evalue}",
                hint="list_files() shows what is there" if missing else "check the path",
                path=path,
            )
        return json.loads(ast.literal_eval(value["data"]["text/plain"]))

    async def upload(self, path: str, data: bytes) -> None:
        rel = clean_path(path)
        if not rel:
            raise FileAccessError("cannot write to the work dir itself", hint="pass a file name", path=path)
        await self._run(rel, op="upload", data=base64.b64encode(data).decode())

    async def download(self, path: str) -> bytes:
        return base64.b64decode(await self._run(clean_path(path), op="download"))

    async def list_files(self, path: str = ".", *, recursive: bool = False) -> list[FileInfo]:
        rows = await self._run(clean_path(path) or ".", op="list", recursive=recursive)
        return sorted((FileInfo(p, size, mtime, is_dir=d) for p, size, mtime, d in rows), key=lambda e: e.path)
