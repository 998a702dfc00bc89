"""Turn what a cell produced into artifacts: rich outputs, displayed DataFrames, changed files.

``Capture`` reads an ``Execution`` and the session's work dir; it never
changes the outputs the kernel produced (they go into the run's notebook as
they are) and writes nothing itself: it returns ``CellCapture`` (artifacts +
events) for the caller to store in one transaction.

DataFrames: a displayed frame reaches the frontend only as HTML/text, and
parsing HTML back loses types. Adding the frame's Parquet bytes to the output
(a custom mime type) would bloat every notebook and count against the output
cap. Instead ``install()`` registers an IPython display formatter in the
kernel that returns nothing (so outputs stay byte-identical) and, as a side
effect, writes each displayed frame as Parquet into ``.dsagent/frames/`` of
the work dir; the folder is emptied before every cell. After the cell the
files are fetched with ``list_files``/``download`` like any other file, so
this works for remote kernels too, with no extra round trip per cell.

Files: the work dir is listed before and after each cell; entries whose size
or mtime changed are downloaded and hashed, and become ``file`` artifacts
unless their bytes are the ones already captured for that path.
"""

from __future__ import annotations

import base64
import io
import json
import mimetypes
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dsagent.artifacts.blobfiles import sha256_hex
from dsagent.artifacts.models import NewArtifact
from dsagent.errors import DsagentError
from dsagent.kernel_gateway.base import KernelSession
from dsagent.kernel_gateway.models import Execution, FileInfo, Output
from dsagent.runs.record import recorded_value
from dsagent.settings import Settings

__all__ = ["Capture", "CellCapture", "FRAMES_DIR", "PARQUET_MIME", "artifacts_from_outputs"]

FRAMES_DIR = ".dsagent/frames"
PARQUET_MIME = "application/vnd.apache.parquet"
_IGNORED_PARTS = {".dsagent", ".ipynb_checkpoints", "__pycache__"}
_OBJECT_REPR = re.compile(r"^<.* at 0x[0-9a-fA-F]+>$|^<Figure size .*>$", re.S)
_EVENT_TEXT_LIMIT = 2000
_IMAGE_MIMES = (("image/png", "png"), ("image/jpeg", "jpg"), ("image/svg+xml", "svg"))

# Runs once in the kernel (one ordinary execute: KernelSession has no silent
# mode). The formatter returns None, so IPython adds nothing to the display
# data; the cell then hides itself so the user's cells keep their numbers.
_KERNEL_SETUP = """
def _dsagent_install_frame_capture(folder, max_bytes):
    import itertools, os, shutil, sys
    from IPython import get_ipython
    from IPython.core.formatters import BaseFormatter
    ip = get_ipython()
    mime = "application/vnd.dsagent.frame-capture"
    if mime in ip.display_formatter.formatters:
        return
    counter = itertools.count()

    def note(number, text):
        with open(os.path.join(folder, "%04d.skipped.txt" % number), "w") as handle:
            handle.write(text)

    class FrameCapture(BaseFormatter):
        format_type = mime

        def __call__(self, obj):
            pandas = sys.modules.get("pandas")
            if pandas is None or not isinstance(obj, pandas.DataFrame):
                return None
            number = next(counter)
            try:
                os.makedirs(folder, exist_ok=True)
                size = int(obj.memory_usage(deep=False).sum())
                if size > max_bytes:
                    note(number, "the DataFrame holds %d bytes in memory, above the capture limit of %d" % (size, max_bytes))
                    return None
                frame = obj
                if not all(isinstance(c, str) for c in obj.columns):
                    frame = obj.copy(deep=False)
                    frame.columns = [str(c) for c in obj.columns]
                frame.to_parquet(os.path.join(folder, "%04d.parquet" % number))
            except Exception as exc:
                try:
                    note(number, "could not write the DataFrame as Parquet: %s: %s" % (type(exc).__name__, exc))
                except Exception:
                    pass
            return None

    def empty_folder(*args):
        shutil.rmtree(folder, ignore_errors=True)

    ip.display_formatter.formatters[mime] = FrameCapture(parent=ip.display_formatter)
    ip.events.register("pre_run_cell", empty_folder)

_dsagent_install_frame_capture(__import__("os").path.abspath(__FOLDER__), __MAX_BYTES__)
del _dsagent_install_frame_capture


def _dsagent_hide_this_cell():
    # give the user's cells back their numbers: this cell's history entry goes
    # to a closed history session, so the next cell can reuse its line number
    ip = get_ipython()
    history = ip.history_manager
    history.writeout_cache()
    history.new_session()
    for hist in (history.input_hist_parsed, history.input_hist_raw):
        if len(hist) > 1:
            hist.pop()
    ip.execution_count -= 1

try:
    _dsagent_hide_this_cell()
except Exception:
    pass
del _dsagent_hide_this_cell
"""


@dataclass
class CellCapture:
    """What one cell produced, ready for ``Transaction.add_artifacts``/``append_events``."""

    artifacts: list[NewArtifact] = field(default_factory=list)
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)


class Capture:
    """Captures the cells of one session; call ``install``, then ``before_cell``/``after_cell`` per cell."""

    def __init__(self, session: KernelSession | None, settings: Settings | None = None) -> None:
        self.session = session
        self.settings = settings or Settings()
        self.frames_enabled = False
        self._before: dict[str, FileInfo] = {}
        self._hashes: dict[str, str] = {}  # path -> sha256 of the bytes last captured for it
        self._workspace_prefix = _workspace_inside(session, self.settings)

    async def install(self) -> list[tuple[str, dict[str, Any]]]:
        """Register the DataFrame formatter in the kernel; returns events (one if it is unavailable)."""
        if self.session is None:
            return []
        code = _KERNEL_SETUP.replace("__FOLDER__", repr(FRAMES_DIR)).replace("__MAX_BYTES__", str(self.settings.capture_max_file_bytes))
        result = await self.session.execute(code, timeout=30)
        self.frames_enabled = result.ok
        if result.ok:
            return []
        reason = f"{result.error.ename}: {result.error.evalue}" if result.error else result.status
        return [("capture_limited", {"what": "dataframes", "reason": f"the kernel refused the display hook ({reason})"})]

    async def before_cell(self) -> None:
        """Remember the work dir's files (size, mtime) to compare against after the cell."""
        if self.session is not None:
            self._before = await self._listing(None) or {}

    async def after_cell(self, execution: Execution, cell: int) -> CellCapture:
        """Artifacts and events of one finished cell (outputs, DataFrames, changed files)."""
        captured = CellCapture()
        after = await self._listing(captured) if self.session is not None else None
        tables = await self._frames(after, cell, captured) if after is not None else 0
        captured.artifacts.extend(artifacts_from_outputs(execution.outputs, cell, skip_frame_html=tables > 0))
        captured.events.extend(_output_events(execution.outputs, cell))
        if after is not None:
            await self._changed_files(after, cell, captured)
            self._before = after
        return captured

    async def _listing(self, captured: CellCapture | None) -> dict[str, FileInfo] | None:
        """The work dir's files; None (and an event) if the session cannot list them, e.g. a dead kernel."""
        assert self.session is not None
        try:
            entries = await self.session.list_files(".", recursive=True)
        except DsagentError as exc:
            if captured is not None:
                captured.events.append(("capture_limited", {"what": "files", "reason": exc.message}))
            return None
        skip = self._workspace_prefix
        # the workspace's own files (its DuckDB file and WAL, blobs) are never the cell's output
        return {e.path: e for e in entries if not e.is_dir and not (skip and (e.path == skip or e.path.startswith(skip + "/")))}

    async def _download(self, path: str, captured: CellCapture) -> bytes | None:
        assert self.session is not None
        try:
            return await self.session.download(path)
        except DsagentError as exc:  # removed between listing and download
            captured.events.append(("file_skipped", {"path": path, "reason": exc.message}))
            return None

    async def _frames(self, after: dict[str, FileInfo], cell: int, captured: CellCapture) -> int:
        prefix = FRAMES_DIR + "/"
        found = 0
        for path in sorted(p for p in after if p.startswith(prefix)):
            info = after[path]
            if path.endswith(".skipped.txt"):
                data = await self._download(path, captured)
                reason = data.decode("utf-8", "replace") if data else "unknown"
                captured.events.append(("table_skipped", {"cell": cell, "reason": reason}))
                continue
            if info.size > self.settings.capture_max_file_bytes:
                captured.events.append(("table_skipped", {"cell": cell, "reason": f"its Parquet file has {info.size} bytes, above the capture limit"}))
                continue
            data = await self._download(path, captured)
            if data is None:
                continue
            meta = _parquet_shape(data)
            captured.artifacts.append(
                NewArtifact(f"cell-{cell}-table-{found + 1}.parquet", "table", PARQUET_MIME, data, cell=cell, metadata=meta)
            )
            found += 1
        return found

    async def _changed_files(self, after: dict[str, FileInfo], cell: int, captured: CellCapture) -> None:
        limit = self.settings.capture_max_file_bytes
        for path, info in after.items():
            if _ignored(path):
                continue
            old = self._before.get(path)
            if old is not None and (old.size, old.mtime) == (info.size, info.mtime):
                continue
            if info.size > limit:
                captured.events.append(("file_skipped", {"cell": cell, "path": path, "size": info.size, "limit": limit,
                                                         "reason": f"{info.size} bytes is above capture_max_file_bytes ({limit})"}))
                continue
            data = await self._download(path, captured)
            if data is None:
                continue
            sha = sha256_hex(data)
            if self._hashes.get(path) == sha:
                continue  # touched, same bytes as captured before
            self._hashes[path] = sha
            mime = mimetypes.guess_type(path)[0] or "application/octet-stream"
            change = "modified" if old is not None else "created"
            captured.artifacts.append(NewArtifact(path, "file", mime, data, cell=cell, metadata={"path": path, "change": change}))
        deleted = sorted(p for p in self._before if p not in after and not _ignored(p))
        if deleted:
            captured.events.append(("files_deleted", {"cell": cell, "paths": deleted}))


def _workspace_inside(session: KernelSession | None, settings: Settings) -> str | None:
    """The workspace folder relative to a local kernel's work dir when it lies inside it (a project
    folder whose workspace is not called ``.dsagent``), else None."""
    if session is None:
        return None
    try:
        relative = Path(settings.home).expanduser().resolve().relative_to(Path(session.work_dir).resolve())
    except (ValueError, OSError):
        return None  # elsewhere, or a remote work dir this machine does not have
    return relative.as_posix() if relative.parts else None


def _ignored(path: str) -> bool:
    return any(part in _IGNORED_PARTS for part in path.split("/"))


def _parquet_shape(data: bytes) -> dict[str, Any]:
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(io.BytesIO(data))
    schema = parquet.schema_arrow
    pandas_meta = json.loads((schema.metadata or {}).get(b"pandas", b"{}"))
    index = {c for c in pandas_meta.get("index_columns", []) if isinstance(c, str)}
    columns = [name for name in schema.names if name not in index]
    return {"rows": parquet.metadata.num_rows, "columns": len(columns), "column_names": columns[:100]}


def artifacts_from_outputs(outputs: list[Output], cell: int | None, *, skip_frame_html: bool = False) -> list[NewArtifact]:
    """One artifact per rich output (image > HTML > JSON > a text repr worth keeping); streams are not artifacts."""
    found: list[NewArtifact] = []
    for index, output in enumerate(outputs):
        if output.get("output_type") not in ("display_data", "execute_result"):
            continue
        made = _artifact_for(output, f"cell-{cell}-output-{index + 1}", skip_frame_html)
        if made is not None:
            made.cell = cell
            made.metadata = {"output_index": index, "output_type": output["output_type"]}
            found.append(made)
    return found


def _text(value: Any) -> str:
    return "".join(value) if isinstance(value, list) else str(value)


def _artifact_for(output: Output, stem: str, skip_frame_html: bool) -> NewArtifact | None:
    data = output.get("data") or {}
    for mime, ext in _IMAGE_MIMES:
        if mime in data:
            raw = _text(data[mime])
            payload = raw.encode() if mime == "image/svg+xml" else base64.b64decode(raw)
            return NewArtifact(f"{stem}.{ext}", "image", mime, payload)
    if "text/html" in data:
        html = _text(data["text/html"])
        if skip_frame_html and 'class="dataframe' in html:
            return None  # the frame itself was captured as a table
        return NewArtifact(f"{stem}.html", "html", "text/html", html.encode())
    for mime, value in data.items():
        if mime.endswith("json"):
            return NewArtifact(f"{stem}.json", "json", mime, json.dumps(value, indent=1).encode())
    text = _text(data.get("text/plain", ""))
    if output["output_type"] == "execute_result" and text.strip() and not _OBJECT_REPR.match(text.strip()):
        return NewArtifact(f"{stem}.txt", "text", "text/plain", text.encode())
    return None


def _output_events(outputs: list[Output], cell: int) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for index, output in enumerate(outputs):
        payload: dict[str, Any] = {"cell": cell, "index": index, "output_type": output.get("output_type")}
        if output.get("output_type") == "stream":
            payload["name"] = output.get("name")
            payload["text"] = _text(output.get("text", ""))[:_EVENT_TEXT_LIMIT]
        elif output.get("output_type") == "error":
            payload.update(ename=output.get("ename"), evalue=str(output.get("evalue", ""))[:_EVENT_TEXT_LIMIT])
        else:
            data = output.get("data") or {}
            payload["mimes"] = sorted(data)
            if "text/plain" in data:
                payload["text"] = _text(data["text/plain"])[:_EVENT_TEXT_LIMIT]
        events.append(("output", payload))
        scalar = recorded_value(output.get("data") or {}) if output.get("output_type") == "display_data" else None
        if scalar is not None:  # dsagent.record / scrapbook glue: what a sweep's comparison reads
            events.append(("record", {"cell": cell, "name": scalar[0], "value": scalar[1]}))
    return events
