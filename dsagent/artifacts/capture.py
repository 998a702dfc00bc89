"""Turn what a cell produced into artifacts: rich outputs, displayed DataFrames, changed files.

``Capture`` reads an ``Execution`` and the session's work dir; it never
changes the outputs the kernel produced (they go into the run's notebook as
they are) and writes nothing itself: it returns ``CellCapture`` (artifacts +
events) for the caller to store in one transaction.

DataFrames: a displayed frame reaches the frontend only as HTML/text, and
parsing HTML back loses types. Adding the frame's Parquet bytes to the output
(a custom mime type) would bloat every notebook and count against the output
cap. Instead ``install()`` runs ``capture_kernel.py`` in the kernel: a display
formatter that returns nothing (so outputs stay byte-identical) and, as a side
effect, writes each displayed frame as Parquet into ``.dsagent/frames/<id>/`` of the
work dir (one folder per session), emptied before every cell.

Files: the same kernel code reports the files the cell's code opened for
writing (an audit hook; see ``capture_kernel.py``) in ``.dsagent/frames/<id>/cell.json``.
After the cell that manifest is downloaded, then the files it names, so the
cost does not grow with the folder (a notebook in ``~`` or ``/tmp`` is not
walked) and a file another process wrote meanwhile is never taken. It works
for remote kernels too, with no extra round trip per cell. Files whose bytes
are the ones already captured for that path are skipped; per run at most
``capture_max_files`` files and ``capture_max_run_bytes`` bytes are kept.
"""

from __future__ import annotations

import base64
import functools
import io
import json
import mimetypes
import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dsagent.artifacts.blobfiles import sha256_hex
from dsagent.artifacts.models import NewArtifact
from dsagent.errors import DsagentError
from dsagent.kernel_gateway.base import KernelSession
from dsagent.kernel_gateway.hidden_cell import HIDE_THIS_CELL
from dsagent.kernel_gateway.models import CHART_MIME, Execution, Output
from dsagent.runs.record import recorded_value
from dsagent.settings import Settings

__all__ = ["Capture", "CellCapture", "FRAMES_DIR", "PARQUET_MIME", "artifacts_from_outputs"]

FRAMES_DIR = ".dsagent/frames"
PARQUET_MIME = "application/vnd.apache.parquet"
_OBJECT_REPR = re.compile(r"^<.* at 0x[0-9a-fA-F]+>$|^<Figure size .*>$", re.S)
_EVENT_TEXT_LIMIT = 2000
_IMAGE_MIMES = (("image/png", "png"), ("image/jpeg", "jpg"), ("image/svg+xml", "svg"))


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
        self._hashes: dict[str, str] = {}  # path -> sha256 of the bytes last captured for it
        self._workspace_prefix = _workspace_inside(session, self.settings)
        self._files_kept = 0  # this run's captured files and their bytes, against the per-run limits
        self._bytes_kept = 0
        self._limit_said = False
        # this session's own scratch folder: kernels sharing a work dir (a sweep's children in the notebook's
        # folder, two runs of one notebook) must not empty or read each other's
        self.folder = f"{FRAMES_DIR}/{uuid.uuid4().hex[:12]}"
        self._last_report = 0  # the kernel numbers its reports: a cell that never reached the kernel has none of its own

    async def install(self) -> list[tuple[str, dict[str, Any]]]:
        """Set up the kernel side (DataFrame formatter, written-files hook); returns events (one if it is unavailable)."""
        if self.session is None:
            return []
        code = (_kernel_code().replace("__FOLDER__", repr(self.folder)).replace("__MAX_BYTES__", str(self.settings.capture_max_file_bytes))
                .replace("__MAX_FILES__", str(self.settings.capture_max_files + 1)))
        # one ordinary execute (KernelSession has no silent mode), hidden from the user's numbering
        result = await self.session.execute(code + HIDE_THIS_CELL, timeout=30)
        self.frames_enabled = result.ok
        if result.ok:
            return []
        reason = f"{result.error.ename}: {result.error.evalue}" if result.error else result.status
        return [("capture_limited", {"what": "dataframes and files", "reason": f"the kernel refused the capture hooks ({reason})"})]

    async def before_cell(self) -> None:
        """Nothing to do: the kernel starts a cell's record itself (``pre_run_cell``)."""

    async def after_cell(self, execution: Execution, cell: int) -> CellCapture:
        """Artifacts and events of one finished cell (outputs, DataFrames, files its code wrote)."""
        captured = CellCapture()
        manifest = await self._manifest(captured) if self.session is not None and self.frames_enabled else None
        tables = await self._frames(manifest["frames"], cell, captured) if manifest else 0
        captured.artifacts.extend(artifacts_from_outputs(execution.outputs, cell, skip_frame_html=tables > 0))
        captured.events.extend(_output_events(execution.outputs, cell))
        if manifest:
            await self._written_files(manifest, cell, captured)
        return captured

    async def _manifest(self, captured: CellCapture) -> dict[str, Any] | None:
        """What the kernel reported for the cell; None (and an event) if it cannot be read, e.g. a dead kernel."""
        assert self.session is not None
        try:
            manifest = json.loads(await self.session.download(f"{self.folder}/cell.json"))
        except DsagentError as exc:
            captured.events.append(("capture_limited", {"what": "files", "reason": exc.message}))
            return None
        except ValueError as exc:
            captured.events.append(("capture_limited", {"what": "files", "reason": f"the kernel's report is unreadable: {exc}"}))
            return None
        if not isinstance(manifest, dict) or manifest.get("seq") == self._last_report:
            return None  # the previous cell's report (say, a file the host uploaded)
        self._last_report = manifest.get("seq")
        return manifest

    async def _download(self, path: str, captured: CellCapture) -> bytes | None:
        assert self.session is not None
        try:
            return await self.session.download(path)
        except DsagentError as exc:  # removed between the report and the download
            captured.events.append(("file_skipped", {"path": path, "reason": exc.message}))
            return None

    async def _frames(self, frames: list[list[Any]], cell: int, captured: CellCapture) -> int:
        found = 0
        for name, size in frames:
            path = f"{self.folder}/{name}"
            if name.endswith(".skipped.txt"):
                data = await self._download(path, captured)
                reason = data.decode("utf-8", "replace") if data else "unknown"
                captured.events.append(("table_skipped", {"cell": cell, "reason": reason}))
                continue
            if size > self.settings.capture_max_file_bytes:
                captured.events.append(("table_skipped", {"cell": cell, "reason": f"its Parquet file has {size} bytes, above the capture limit"}))
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

    async def _written_files(self, manifest: dict[str, Any], cell: int, captured: CellCapture) -> None:
        for path, size, change in manifest.get("files", []):
            if self._is_workspace(path) or not self._within_limits(path, size, cell, captured):
                continue
            data = await self._download(path, captured)
            if data is None:
                continue
            sha = sha256_hex(data)
            if self._hashes.get(path) == sha:
                continue  # rewritten with the bytes captured before
            self._hashes[path] = sha
            self._files_kept += 1
            self._bytes_kept += len(data)
            mime = mimetypes.guess_type(path)[0] or "application/octet-stream"
            captured.artifacts.append(NewArtifact(path, "file", mime, data, cell=cell, metadata={"path": path, "change": change}))
        if manifest.get("overflow"):
            self._run_limit(cell, captured, f"the cell wrote more than capture_max_files ({self.settings.capture_max_files}) files")
        deleted = [p for p in manifest.get("removed", []) if not self._is_workspace(p)]
        if deleted:
            captured.events.append(("files_deleted", {"cell": cell, "paths": deleted}))

    def _within_limits(self, path: str, size: int, cell: int, captured: CellCapture) -> bool:
        limit = self.settings.capture_max_file_bytes
        if size > limit:
            captured.events.append(("file_skipped", {"cell": cell, "path": path, "size": size, "limit": limit,
                                                     "reason": f"{size} bytes is above capture_max_file_bytes ({limit})"}))
            return False
        if self._files_kept >= self.settings.capture_max_files:
            self._run_limit(cell, captured, f"the run reached capture_max_files ({self.settings.capture_max_files})")
            return False
        if self._bytes_kept + size > self.settings.capture_max_run_bytes:
            self._run_limit(cell, captured, f"the run reached capture_max_run_bytes ({self.settings.capture_max_run_bytes} bytes)")
            return False
        return True

    def _run_limit(self, cell: int, captured: CellCapture, why: str) -> None:
        """Say once per run that files were left out, and how to keep them."""
        if self._limit_said:
            return
        self._limit_said = True
        captured.events.append(("capture_limited", {"what": "files", "cell": cell, "reason": (
            f"{why}: later files of this run are not captured; raise DSAGENT_CAPTURE_MAX_FILES / "
            "DSAGENT_CAPTURE_MAX_RUN_BYTES, or write fewer, bigger files")}))

    def _is_workspace(self, path: str) -> bool:
        """The workspace's own files (its DuckDB file and WAL, blobs) are never the cell's output."""
        skip = self._workspace_prefix
        return bool(skip) and (path == skip or path.startswith(skip + "/"))


@functools.cache
def _kernel_code() -> str:
    return (Path(__file__).with_name("capture_kernel.py")).read_text(encoding="utf-8")


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


def _parquet_shape(data: bytes) -> dict[str, Any]:
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(io.BytesIO(data))
    schema = parquet.schema_arrow
    pandas_meta = json.loads((schema.metadata or {}).get(b"pandas", b"{}"))
    index = {c for c in pandas_meta.get("index_columns", []) if isinstance(c, str)}
    columns = [name for name in schema.names if name not in index]
    return {"rows": parquet.metadata.num_rows, "columns": len(columns), "column_names": columns[:100]}


def artifacts_from_outputs(outputs: list[Output], cell: int | None, *, skip_frame_html: bool = False) -> list[NewArtifact]:
    """One artifact per rich output (image > HTML > JSON > a text repr worth keeping); streams are not artifacts.

    A figure's chart data (E2B's ``e2b/chart``, ``CHART_MIME``: the plotted
    points, a small table) is kept as a JSON artifact of its own beside the image.
    """
    found: list[NewArtifact] = []
    for index, output in enumerate(outputs):
        if output.get("output_type") not in ("display_data", "execute_result"):
            continue
        stem = f"cell-{cell}-output-{index + 1}"
        made = [_artifact_for(output, stem, skip_frame_html)]
        chart = (output.get("data") or {}).get(CHART_MIME)
        if chart and (made[0] is None or made[0].mime != CHART_MIME):
            made.append(NewArtifact(f"{stem}.chart.json", "json", CHART_MIME, json.dumps(chart, indent=1).encode()))
        for artifact in made:
            if artifact is not None:
                artifact.cell = cell
                artifact.metadata = {"output_index": index, "output_type": output["output_type"]}
                found.append(artifact)
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
