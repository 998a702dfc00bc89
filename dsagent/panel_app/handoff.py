"""The server side of ``dsagent run``'s hand-off: the dashboard process runs the notebook on a warm kernel.

Routes (loopback callers with the advert's token only; see ``runs/handoff.py``):

    POST /api/handoff/runs                 {notebook, parameters, text_parameters, raw_parameters, backend,
                                            output, timeout, cwd, kernel, log_output} -> {run_id, notebook}
    GET  /api/handoff/runs/{id}?after=N&wait=S   progress items after the N-th, and the outcome once it ended
    POST /api/handoff/runs/{id}/cancel

The run belongs to this process (its ``RunRecorder`` records this pid), so the
dashboard's Cancel and the CLI's Ctrl-C both cancel its task here. Backends
stay open between runs (their pools stay warm), one per backend and kernelspec.
Progress items are what the CLI prints for a local run: finished cells and,
with ``log_output``, the cells' stdout/stderr.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tornado.web import RequestHandler

from dsagent.errors import DsagentError
from dsagent.panel_app.context import AppContext
from dsagent.runs.handoff import Advert, remove_advert, write_advert

__all__ = ["HandoffService", "routes", "cancel_served"]

log = logging.getLogger(__name__)

#: finished runs kept for a CLI that has not read their outcome yet
KEEP_FINISHED = 50
LOOPBACK = ("127.0.0.1", "::1")
#: request fields and their JSON types
FIELDS: dict[str, type | tuple[type, ...]] = {
    "notebook": str, "parameters": dict, "text_parameters": dict, "raw_parameters": dict, "backend": (str, type(None)),
    "output": (str, type(None)), "timeout": (int, float, type(None)), "cwd": (str, type(None)), "kernel": (str, type(None)),
    "log_output": bool, "allow_unknown_parameters": bool,
}  # fmt: skip

_SERVED: dict[int, "ServedRun"] = {}  # run id -> a run this process runs (for cancel_run in actions.py)


@dataclass
class ServedRun:
    """One handed-off run: its task, what the CLI has to print, its outcome."""

    loop: asyncio.AbstractEventLoop
    task: "asyncio.Task[None] | None" = None
    run_id: int | None = None
    partial: str = ""  # where its (partial) notebook goes
    backend: str = ""
    items: list[dict[str, Any]] = field(default_factory=list)
    outcome: dict[str, Any] | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def add(self, item: dict[str, Any]) -> None:
        self.items.append(item)
        self.changed.set()

    def finish(self, outcome: dict[str, Any]) -> None:
        self.outcome = outcome
        self.changed.set()

    def on_cell(self, step: Any) -> None:
        if step.execution is not None:
            ex = step.execution
            self.add({"kind": "cell", "index": step.index, "total": step.total, "status": "ok" if ex.ok else ex.status, "seconds": ex.duration})


class _Stream:
    """A text file for the cell loop's ``stdout_file``/``stderr_file``: writes become progress items."""

    def __init__(self, served: ServedRun, name: str) -> None:
        self.served, self.name = served, name

    def write(self, text: str) -> int:
        if text:
            self.served.add({"kind": self.name, "text": text})
        return len(text)

    def flush(self) -> None:
        pass


def cancel_served(run_id: int) -> bool:
    """Cancel run ``run_id`` if this process runs it for a CLI (callable from any thread); False if it does not."""
    served = _SERVED.get(run_id)
    if served is None or served.task is None or served.outcome is not None:
        return False
    served.loop.call_soon_threadsafe(served.task.cancel)
    return True


class HandoffService:
    """Runs handed-off notebooks in this (dashboard) process; one per server."""

    _by_context: dict[int, "HandoffService"] = {}

    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx
        self.settings = ctx.settings
        self.advert: Advert | None = None
        self._store: Any = None  # a store of its own: the dashboard's gives up on the lock too soon for writes
        self._backends: dict[tuple[str, str], Any] = {}
        self._lock = asyncio.Lock()

    @classmethod
    def for_context(cls, ctx: AppContext) -> "HandoffService":
        service = cls._by_context.get(id(ctx))
        if service is None:
            service = cls._by_context[id(ctx)] = cls(ctx)
        return service

    # -- the advert ------------------------------------------------------------

    def advertise(self, port: int) -> None:
        self.advert = write_advert(self.ctx.home, port)

    def withdraw(self) -> None:
        if self.advert is not None:
            remove_advert(self.ctx.home, self.advert)

    def authorized(self, header: str | None) -> bool:
        expected = f"Bearer {self.advert.token}" if self.advert else None
        return expected is not None and header is not None and hmac.compare_digest(header.encode(), expected.encode())

    # -- runs --------------------------------------------------------------------

    async def submit(self, body: dict[str, Any]) -> ServedRun:
        """Start the run; returns once it exists (raises DsagentError for bad input, as a local run would)."""
        served = ServedRun(asyncio.get_running_loop())
        accepted: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def on_run(run: Any, path: Path) -> None:
            served.run_id, served.partial, served.backend = run.id, str(path), run.backend
            _SERVED[run.id] = served
            accepted.set_result(None)

        served.task = asyncio.ensure_future(self._run(body, served, on_run))
        await asyncio.wait([accepted, served.task], return_when=asyncio.FIRST_COMPLETED)
        if not accepted.done():
            accepted.cancel()
            served.task.result()  # raises what stopped it before the run existed
            raise DsagentError("the server ended the run before it started", hint="run it locally: dsagent run --no-server ...")
        self._forget_old()
        return served

    async def _run(self, body: dict[str, Any], served: ServedRun, on_run: Any) -> None:
        from dsagent.artifacts.recorder import CALLER_HANDLES_SIGTERM
        from dsagent.runs.notebook_run import execute_notebook_run

        CALLER_HANDLES_SIGTERM.set(True)  # the server's SIGTERM handler stays; it cancels through this task
        log_output = bool(body.get("log_output"))
        try:
            kernels = await self._backend(body["notebook"], body.get("backend"), body.get("kernel"))
            outcome = await execute_notebook_run(
                body["notebook"], body.get("parameters") or {}, text_parameters=body.get("text_parameters") or {},
                raw_parameters=body.get("raw_parameters") or {}, backend=kernels, output_path=body.get("output"),
                timeout=body.get("timeout"), cwd=body.get("cwd"), kernel_name=body.get("kernel"), settings=self.settings,
                allow_unknown_parameters=bool(body.get("allow_unknown_parameters")), store=await self._writer(), on_cell=served.on_cell, on_run=on_run,
                stdout_file=_Stream(served, "stdout") if log_output else None, stderr_file=_Stream(served, "stderr") if log_output else None,
            )  # fmt: skip
        except asyncio.CancelledError:
            served.finish({"cancelled": True, "run_id": served.run_id, "notebook": served.partial})
            return
        except Exception as exc:
            if served.run_id is None:
                raise  # before the run existed: submit() answers with it
            log.warning("handed-off run %s failed", served.run_id, exc_info=True)
            served.finish({"error": getattr(exc, "message", str(exc)), "hint": getattr(exc, "hint", ""), "run_id": served.run_id})
            return
        failure = outcome.failure
        served.finish({
            "run": outcome.run.to_json(), "notebook": str(outcome.notebook_path), "artifacts": len(outcome.artifacts),
            "failure": None if failure is None else {"describe": failure.describe(), "kind": failure.kind},
        })  # fmt: skip

    async def _writer(self) -> Any:
        async with self._lock:
            if self._store is None:
                from dsagent.runs.notebook_run import _open_store

                self._store = await asyncio.to_thread(_open_store, self.settings)
            return self._store

    async def _backend(self, notebook: str, name: str | None, kernel: str | None) -> Any:
        """The open backend for this notebook's kernelspec (its pool stays warm for the next run)."""
        from dsagent.runs.notebook_cells import LOCAL_FS_BACKENDS, make_backend, notebook_kernel_name
        from dsagent.runs.notebook_input import peek_notebook

        nb = await asyncio.to_thread(peek_notebook, Path(notebook))
        kernel_name = notebook_kernel_name(nb, kernel, path=notebook)
        chosen = name or self.settings.backend
        key = (chosen, kernel_name if chosen in LOCAL_FS_BACKENDS else "")
        async with self._lock:
            backend = self._backends.get(key)
            if backend is None:
                backend = self._backends[key] = make_backend(chosen, self.settings, kernel_name)
                warm = getattr(backend, "warm", None)
                if warm is not None:  # the template and pool get ready in the background; this run does not wait
                    task = asyncio.ensure_future(warm())
                    task.add_done_callback(lambda t: t.cancelled() or t.exception())
        return backend

    def _forget_old(self) -> None:
        finished = [run_id for run_id, s in _SERVED.items() if s.outcome is not None]
        for run_id in finished[:-KEEP_FINISHED]:
            _SERVED.pop(run_id, None)

    async def cancel(self, run_id: int, user: str) -> bool:
        served = _SERVED.get(run_id)
        if served is None or served.task is None or served.outcome is not None:
            return False
        store = await self._writer()
        await asyncio.to_thread(store.append_events, run_id, [("cancel_requested", {"user": user, "via": "cli"})])
        served.task.cancel()
        return True

    async def aclose(self) -> None:
        """Cancel running hand-offs (their runs end ``cancelled``), close backends and the store."""
        tasks = [s.task for s in _SERVED.values() if s.task is not None and not s.task.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=15)
        for backend in self._backends.values():
            await backend.aclose()
        if self._store is not None:
            self._store.close()


class _HandoffHandler(RequestHandler):
    def initialize(self, service: HandoffService) -> None:
        self.service = service

    def check_xsrf_cookie(self) -> None:
        pass  # a bearer token, not a cookie, authorizes these requests

    def prepare(self) -> None:
        if self.request.remote_ip not in LOOPBACK or not self.service.authorized(self.request.headers.get("Authorization")):
            self._answer(403, {"error": "hand-off routes take requests from this machine with the workspace's token only"})

    def _answer(self, status: int, data: dict[str, Any]) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")
        self.finish(json.dumps(data, default=str))


class SubmitHandler(_HandoffHandler):
    async def post(self) -> None:
        try:
            body = json.loads(self.request.body or b"{}")
            bad = [k for k, kind in FIELDS.items() if k in body and not isinstance(body[k], kind)]
            if not isinstance(body.get("notebook"), str) or bad:
                raise ValueError(f"bad fields: {', '.join(bad) or 'notebook'}")
        except ValueError as exc:
            return self._answer(400, {"error": f"a malformed hand-off request: {exc}", "hint": "run it locally: dsagent run --no-server ..."})
        try:
            served = await self.service.submit(body)
        except DsagentError as exc:
            return self._answer(400, {"error": exc.message, "hint": exc.hint or ""})
        self._answer(200, {"run_id": served.run_id, "notebook": served.partial, "backend": served.backend})


class FollowHandler(_HandoffHandler):
    async def get(self, raw_id: str) -> None:
        served = _SERVED.get(int(raw_id))
        if served is None:
            return self._answer(404, {"error": f"run {raw_id} is not a run this server took over"})
        try:
            after = max(0, int(self.get_query_argument("after", "0")))
            wait = min(5.0, max(0.0, float(self.get_query_argument("wait", "0"))))
        except ValueError:
            return self._answer(400, {"error": "after and wait must be numbers"})
        if len(served.items) <= after and served.outcome is None:
            served.changed.clear()
            try:
                await asyncio.wait_for(served.changed.wait(), wait)
            except asyncio.TimeoutError:
                pass
        items = served.items[after:]
        # one event loop: an outcome is set after the run's last item, so these items are all of them
        self._answer(200, {"items": items, "next": after + len(items), "outcome": served.outcome})


class CancelHandler(_HandoffHandler):
    async def post(self, raw_id: str) -> None:
        cancelled = await self.service.cancel(int(raw_id), "cli")
        self._answer(200, {"cancelled": cancelled})


def routes(ctx: AppContext) -> list[tuple[str, type, dict[str, Any]]]:
    """Tornado patterns of the hand-off routes (placed before ``/api/(.*)``)."""
    kw = {"service": HandoffService.for_context(ctx)}
    return [
        (r"/api/handoff/runs/?", SubmitHandler, kw),
        (r"/api/handoff/runs/(\d+)/?", FollowHandler, kw),
        (r"/api/handoff/runs/(\d+)/cancel/?", CancelHandler, kw),
    ]
