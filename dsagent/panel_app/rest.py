"""The REST routes of the dashboard server (Tornado handlers on Panel's server), JSON and paginated.

    GET /api/runs                     ?kind&status&q&since&until&sort&desc&offset&limit
    GET /api/runs/{id}
    GET /api/runs/{id}/events         ?after=SEQ&limit
    GET /api/runs/{id}/export.zip     all artifacts + manifest.json
    GET /api/artifacts                ?run&kind&exclude_kind&mime&name&since&until&cursor&limit
    GET /api/artifacts/{id}           the exact bytes (ETag, Range, safe Content-Disposition)
    GET /api/artifacts/{id}/meta      its metadata
    GET /api/artifacts/{id}/preview   HTML/notebook/SVG for a sandboxed iframe, under a strict CSP
    GET /api/artifacts/{id}/thumb     a small PNG of an image (kept in the workspace)

An unknown id answers 404 and a bad parameter 400, both ``{"error": ..., "hint": ...}``.
With auth on, a request needs the login cookie or ``Authorization: Basic``.
"""

from __future__ import annotations

import asyncio
import json
import re
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote

from tornado.web import RequestHandler

from dsagent.errors import DsagentError, NotFound, StoreLocked
from dsagent.panel_app.auth import PASSWORD_CHECKS, basic_user as _basic_user, session_user
from dsagent.panel_app.context import AppContext

__all__ = ["routes", "PREVIEW_CSP"]

#: what a previewed artifact may do: run its own inline scripts (plots) in an opaque
#: origin (``sandbox`` without allow-same-origin), load nothing, reach nothing
PREVIEW_CSP = ("sandbox allow-scripts; default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
               "img-src data: blob:; font-src data:; connect-src 'none'; form-action 'none'; base-uri 'none'")
_SCRIPT = re.compile(r"<script\b[^>]*>.*?</script>", re.S | re.I)


#: how long the byte routes (artifact bytes, thumbnails) wait for a busy store before answering 503
BYTES_PATIENCE_S = 10.0


_MAX_INT = 2**63 - 1  # DuckDB's BIGINT: an offset past it failed inside the query (HTTP 500)


class BadParameter(DsagentError):
    pass


class ApiHandler(RequestHandler):
    """Shared: auth, parameter parsing, JSON errors."""

    def initialize(self, ctx: AppContext) -> None:
        self.ctx = ctx

    async def prepare(self) -> None:
        self.current_user = await self._user()
        if self.current_user is None:
            self.set_header("WWW-Authenticate", 'Basic realm="dsagent"')
            self._error(401, "login required", "log in on the dashboard, or pass credentials: curl -u USER:PASSWORD ..., or an API token "
                        "(dsagent serve --add-token NAME): curl -H 'Authorization: Bearer TOKEN' ...")
            # finished: Tornado does not call get() after a prepare() that finished the request

    async def _user(self) -> str | None:
        credentials = self.ctx.credentials
        if credentials is None:
            return "anonymous"
        user = session_user(credentials, self, self.ctx.settings.dashboard_session_days)
        header = self.request.headers.get("Authorization")
        if user or not header:
            return user
        if header[:7].lower() == "bearer ":
            return credentials.tokens.user(header) if credentials.tokens is not None else None
        # a script's Basic header costs a PBKDF2: on the login threads, and throttled like the login form
        client, name = self.request.remote_ip or "?", _basic_user(header)
        if credentials.throttle.wait_s(client, name) > 0:
            return None
        user = await asyncio.get_running_loop().run_in_executor(PASSWORD_CHECKS, credentials.check_header, header)
        (credentials.throttle.succeeded if user else credentials.throttle.failed)(client, name)
        return user

    def _error(self, status: int, message: str, hint: str = "", **extra: Any) -> None:
        self.clear_header("Content-Disposition")
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"error": message, "hint": hint, **extra}))

    def send_json(self, data: Any) -> None:
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")
        self.finish(json.dumps(data, default=str))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        if not self._finished:
            self._error(status_code, self._reason)

    async def read(self, fn, *args, **kwargs):
        return await self.ctx.read(fn, *args, **kwargs)

    async def read_patiently(self, fn, *args, **kwargs):
        """``read`` that waits out a busy store for up to BYTES_PATIENCE_S: an ``<img>`` or a download
        link cannot retry a 503 the way the pages and API clients do, it would just show broken."""
        deadline = asyncio.get_running_loop().time() + BYTES_PATIENCE_S
        while True:
            try:
                return await self.ctx.read(fn, *args, **kwargs)
            except StoreLocked:
                if asyncio.get_running_loop().time() >= deadline:
                    raise
                await asyncio.sleep(0.1)

    async def guarded(self, coro_fn) -> None:
        """Run the handler body, turning dsagent errors into JSON answers."""
        try:
            await coro_fn()
        except NotFound as exc:
            self._error(404, exc.message, exc.hint or "")
        except BadParameter as exc:
            self._error(400, exc.message, exc.hint or "", parameter=getattr(exc, "parameter", None))
        except StoreLocked as exc:
            self.set_header("Retry-After", "1")
            self._error(503, exc.message, "the workspace is busy; retry in a moment")
        except DsagentError as exc:
            if getattr(exc, "parameter", None):
                self._error(400, exc.message, exc.hint or "", parameter=exc.parameter)
            else:
                self._error(500, exc.message, exc.hint or "")

    # -- parameters ----------------------------------------------------------

    def int_arg(self, name: str, default: int | None = None, *, low: int = 0, high: int | None = None) -> int | None:
        raw = self.get_query_argument(name, None)
        if raw is None or raw == "":
            return default
        try:
            if len(raw) > 20:  # past any 64-bit value; int() of thousands of digits is refused by Python anyway
                raise ValueError(raw)
            value = int(raw)
        except ValueError:
            raise BadParameter(f"parameter {name!r} must be an integer, got {raw!r}", hint=f"e.g. ?{name}=10", parameter=name) from None
        high = _MAX_INT if high is None else high
        if value < low or value > high:
            raise BadParameter(f"parameter {name!r} must be between {low} and {high}", hint=f"e.g. ?{name}={low}", parameter=name)
        return value

    def date_arg(self, name: str) -> datetime | None:
        raw = self.get_query_argument(name, None)
        if not raw:
            return None
        try:
            value = datetime.fromisoformat(raw)
        except ValueError:
            raise BadParameter(f"parameter {name!r} must be an ISO date or time, got {raw!r}", hint=f"e.g. ?{name}=2026-01-31", parameter=name) from None
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)

    def choice_arg(self, name: str, choices: tuple[str, ...]) -> str | None:
        raw = self.get_query_argument(name, None) or None
        if raw is not None and raw not in choices:
            raise BadParameter(f"parameter {name!r} must be one of {', '.join(choices)}; got {raw!r}", hint="", parameter=name)
        return raw


def _id(raw: str, what: str) -> int:
    try:
        value = int(raw) if len(raw) <= 18 else None  # no id is longer (a BIGINT); int() of thousands of digits fails
    except ValueError:
        value = None
    if value is None:
        shown = raw if len(raw) <= 40 else raw[:40] + "…"
        raise NotFound(f"no {what} with id {shown!r}", hint=f"{what} ids are integers", what=what, id=shown)
    return value


class RunsHandler(ApiHandler):
    async def get(self) -> None:
        async def body() -> None:
            from dsagent.artifacts import schema
            from dsagent.artifacts.run_queries import RUN_SORT_COLUMNS

            page = await self.read(
                self.ctx.store.search_runs,
                kind=self.choice_arg("kind", schema.RUN_KINDS), status=self.choice_arg("status", schema.RUN_STATUSES),
                text=self.get_query_argument("q", None) or None, since=self.date_arg("since"), until=self.date_arg("until"),
                parent_id=self.int_arg("parent"), sort=self.choice_arg("sort", RUN_SORT_COLUMNS) or "id",
                descending=self.get_query_argument("desc", "1") not in ("0", "false"),
                offset=self.int_arg("offset", 0), limit=self.int_arg("limit", 50, low=1, high=1000),
            )
            next_offset = page.offset + page.limit if page.offset + page.limit < page.total else None
            self.send_json({"items": [r.to_json() for r in page.items], "total": page.total, "offset": page.offset,
                            "limit": page.limit, "next_offset": next_offset})
        await self.guarded(body)


class RunHandler(ApiHandler):
    async def get(self, run_id: str) -> None:
        async def body() -> None:
            rid = _id(run_id, "run")
            run = await self.read(self.ctx.store.get_run, rid)
            count = await self.read(self.ctx.store.artifact_count, rid)
            self.send_json({**run.to_json(), "artifacts": count})
        await self.guarded(body)


class EventsHandler(ApiHandler):
    async def get(self, run_id: str) -> None:
        async def body() -> None:
            rid = _id(run_id, "run")
            after = self.int_arg("after", 0)
            limit = self.int_arg("limit", 500, low=1, high=5000)
            await self.read(self.ctx.store.get_run, rid)  # 404 for unknown runs
            events = await self.read(self.ctx.store.events, rid, after=after, limit=limit)
            self.send_json({"items": [e.to_json() for e in events], "next_after": events[-1].seq if events else after})
        await self.guarded(body)


class ExportHandler(ApiHandler):
    async def get(self, run_id: str) -> None:
        async def body() -> None:
            from dsagent.artifacts.export import export_run

            rid = _id(run_id, "run")
            with tempfile.TemporaryDirectory(prefix="dsagent-export-") as tmp:
                target = Path(tmp) / f"run-{rid}.zip"
                await self.read(export_run, self.ctx.store, rid, target)
                data = target.read_bytes()
            self.set_header("Content-Type", "application/zip")
            self.set_header("Content-Disposition", f'attachment; filename="run-{rid}-artifacts.zip"')
            self.finish(data)
        await self.guarded(body)


class ArtifactsHandler(ApiHandler):
    async def get(self) -> None:
        async def body() -> None:
            from dsagent.artifacts import schema

            page = await self.read(
                self.ctx.store.search_artifacts,
                run_id=self.int_arg("run"), kind=self.choice_arg("kind", schema.ARTIFACT_KINDS),
                exclude_kind=self.choice_arg("exclude_kind", schema.ARTIFACT_KINDS),
                mime=self.get_query_argument("mime", None) or None, name=self.get_query_argument("name", None) or None,
                since=self.date_arg("since"), until=self.date_arg("until"),
                cursor=str(self.int_arg("cursor")) if self.get_query_argument("cursor", None) else None,
                limit=self.int_arg("limit", 50, low=1, high=1000),
            )
            self.send_json({"items": [a.to_json() for a in page.items], "next_cursor": page.next_cursor})
        await self.guarded(body)


def content_disposition(name: str, *, inline: bool = False) -> str:
    """A header naming the file safely: an ASCII fallback plus RFC 5987 UTF-8, no path, no quotes."""
    base = re.sub(r"[\x00-\x1f\x7f/\\\"';:]+", "_", name.rsplit("/", 1)[-1]).strip(". ") or "artifact"
    ascii_name = base.encode("ascii", "replace").decode("ascii").replace("?", "_")
    kind = "inline" if inline else "attachment"
    return f"{kind}; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(base, safe='')}"


class ArtifactBytesHandler(ApiHandler):
    async def get(self, artifact_id: str) -> None:
        async def body() -> None:
            artifact, data = await self.read_patiently(self.ctx.store.read_artifact, _id(artifact_id, "artifact"))
            etag = f'"{artifact.sha256}"'
            self.set_header("ETag", etag)
            self.set_header("Cache-Control", "private, max-age=3600")
            self.set_header("X-Content-Type-Options", "nosniff")
            # served bytes never run as a page of this origin (an HTML or SVG artifact opened directly)
            self.set_header("Content-Security-Policy", PREVIEW_CSP)
            self.set_header("Content-Type", artifact.mime or "application/octet-stream")
            self.set_header("Content-Disposition", content_disposition(artifact.name))
            self.set_header("Accept-Ranges", "bytes")
            if etag in (self.request.headers.get("If-None-Match") or ""):
                self.set_status(304)
                self.finish()
                return
            start, end = _byte_range(self.request.headers.get("Range"), len(data))
            if start is None:
                self.finish(data)
                return
            if start >= len(data):
                self.set_status(416)
                self.set_header("Content-Range", f"bytes */{len(data)}")
                self.finish()
                return
            self.set_status(206)
            self.set_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
            self.finish(data[start:end + 1])
        await self.guarded(body)


def _byte_range(header: str | None, size: int) -> tuple[int | None, int]:
    """One ``bytes=a-b`` / ``bytes=a-`` / ``bytes=-n`` range; anything else means the whole file.

    Positions longer than 18 digits are past any file: a start that far is unsatisfiable (416), an end or a
    suffix that far means "to the end" (never ``int()`` of 5000 digits, which Python refuses)."""
    match = re.fullmatch(r"\s*bytes=(\d*)-(\d*)\s*", header or "")
    if not match or match.groups() == ("", ""):
        return None, size - 1
    first, last = (g if len(g) <= 18 else str(_MAX_INT) for g in match.groups())
    if first == "":
        return max(0, size - int(last)), size - 1
    return int(first), min(int(last), size - 1) if last else size - 1


class ArtifactMetaHandler(ApiHandler):
    async def get(self, artifact_id: str) -> None:
        async def body() -> None:
            artifact = await self.read(self.ctx.store.get_artifact, _id(artifact_id, "artifact"))
            self.send_json(artifact.to_json())
        await self.guarded(body)


class PreviewHandler(ApiHandler):
    """HTML, notebooks (rendered by nbconvert) and SVG, for a sandboxed iframe; strict CSP."""

    async def get(self, artifact_id: str) -> None:
        async def body() -> None:
            artifact, data = await self.read(self.ctx.store.read_artifact, _id(artifact_id, "artifact"))
            if artifact.kind == "notebook":
                html = await self.read(rendered_notebook, self.ctx.home / "previews", artifact.sha256, data)
            elif artifact.mime == "image/svg+xml":
                import base64

                html = f'<img alt="" style="max-width:100%" src="data:image/svg+xml;base64,{base64.b64encode(data).decode()}">'
            elif artifact.kind == "html" or artifact.mime.startswith("text/html"):
                html = data.decode("utf-8", "replace")
            else:
                raise BadParameter(f"artifact {artifact.id} ({artifact.mime}) has no HTML preview", hint=f"download it: /api/artifacts/{artifact.id}")
            self.set_header("Content-Security-Policy", PREVIEW_CSP)
            self.set_header("X-Content-Type-Options", "nosniff")
            self.set_header("Content-Type", "text/html; charset=utf-8")
            self.finish(html)
        await self.guarded(body)


def rendered_notebook(folder: Path, sha256: str, data: bytes) -> str:
    """The notebook's HTML, rendered once per content (sha256) and kept in ``<workspace>/previews/``."""
    import os

    path = folder / f"{sha256}.html"
    if path.exists():
        return path.read_text(encoding="utf-8")
    html = render_notebook(data)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(html, encoding="utf-8")
    os.replace(tmp, path)
    return html


def warm_up() -> None:
    """Import nbconvert and load its template once (seconds on a busy machine), before a page needs it;
    papermill's inspection too (a notebook's page reads its parameters with it while the page is built)."""
    render_notebook(b'{"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}')
    import papermill.inspection  # noqa: F401


def render_notebook(data: bytes) -> str:
    """An executed notebook as standalone HTML (nbconvert's lab template), its scripts dropped (the CSP blocks them anyway)."""
    import nbformat
    from nbconvert import HTMLExporter

    notebook = nbformat.reads(data.decode("utf-8"), as_version=4)
    html, _ = HTMLExporter(template_name="lab").from_notebook_node(notebook)
    return _SCRIPT.sub("", html)


class ThumbHandler(ApiHandler):
    async def get(self, artifact_id: str) -> None:
        async def body() -> None:
            from dsagent.panel_app.thumbnails import kept_thumbnail, thumbnail

            aid = _id(artifact_id, "artifact")
            kept = kept_thumbnail(self.ctx.thumbnails_dir, self.get_query_argument("sha256", ""))
            if kept is not None:  # the gallery names the content: a kept thumbnail needs no store read (no lock turn)
                self._send_thumb(kept, "image/png")
                return
            artifact = await self.read_patiently(self.ctx.store.get_artifact, aid)
            thumb = await self.read_patiently(thumbnail, self.ctx.thumbnails_dir, artifact.sha256, lambda: self.ctx.store.read_bytes(aid))
            if thumb is None:  # not a raster image: the full bytes (an SVG shown through <img> cannot run scripts)
                _, thumb = await self.read_patiently(self.ctx.store.read_artifact, aid)
                self._send_thumb(thumb, artifact.mime)
            else:
                self._send_thumb(thumb, "image/png")
        await self.guarded(body)

    def _send_thumb(self, data: bytes, mime: str) -> None:
        self.set_header("Content-Type", mime)
        self.set_header("Cache-Control", "private, max-age=86400, immutable")
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Content-Security-Policy", PREVIEW_CSP)
        self.finish(data)


class NotFoundHandler(ApiHandler):
    async def get(self, *_: str) -> None:
        self._error(404, f"no route {self.request.path}", "see the README's REST section for the routes")


def routes(ctx: AppContext) -> list[tuple[str, type, dict[str, Any]]]:
    """Tornado patterns for ``pn.serve(extra_patterns=...)``."""
    from dsagent.panel_app import handoff

    kw = {"ctx": ctx}
    return [
        *handoff.routes(ctx),  # `dsagent run` handing its run to this server
        (r"/api/runs/?", RunsHandler, kw),
        (r"/api/runs/([^/]+)/?", RunHandler, kw),
        (r"/api/runs/([^/]+)/events/?", EventsHandler, kw),
        (r"/api/runs/([^/]+)/export\.zip", ExportHandler, kw),
        (r"/api/artifacts/?", ArtifactsHandler, kw),
        (r"/api/artifacts/([^/]+)/?", ArtifactBytesHandler, kw),
        (r"/api/artifacts/([^/]+)/meta/?", ArtifactMetaHandler, kw),
        (r"/api/artifacts/([^/]+)/preview/?", PreviewHandler, kw),
        (r"/api/artifacts/([^/]+)/thumb/?", ThumbHandler, kw),
        (r"/api/(.*)", NotFoundHandler, kw),
    ]
