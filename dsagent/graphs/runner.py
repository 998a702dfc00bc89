"""Run an agent graph as a recorded ``agent`` run: kernel, store, checkpoints, notebook.

``ask`` is the Python API (``dsagent ask`` calls ``execute_agent_run``)::

    run = await dsagent.ask("Which region grew fastest?", data=["sales.csv"])
    run.status, run.id          # the answer, artifacts and notebook are in the store

Every run leaves a notebook (``notebook`` artifact, and a file under
``<workspace>/outputs/agents/``), also when it fails or is cancelled: it is
assembled from the last checkpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import nbformat

from dsagent.errors import AgentError, LLMRequestError, LLMUnavailable
from dsagent.settings import Settings
from dsagent.workspace import Workspace

if TYPE_CHECKING:
    from dsagent.artifacts.models import Artifact, Run
    from dsagent.artifacts.store import Store
    from dsagent.graphs.context import Approver, Budget, StepHook
    from dsagent.kernel_gateway.base import KernelBackend, KernelSession

__all__ = ["AgentOutcome", "ask", "execute_agent_run", "open_checkpointer", "resume_agent_run"]

GRAPHS = ("analysis", "coding", "team")


@dataclass
class AgentOutcome:
    run: "Run"
    answer: str
    artifacts: list["Artifact"] = field(default_factory=list)
    notebook_path: Path | None = None
    state: dict[str, Any] = field(default_factory=dict)


async def ask(question: str, data: Sequence[str | Path] = (), **options: Any) -> "Run":
    """Answer ``question`` about the ``data`` files with the analysis agent; the finished run."""
    return (await execute_agent_run(question, data, **options)).run


def _datasets(data: Sequence[str | Path]) -> list[dict[str, str]]:
    refs, seen = [], set()
    for number, item in enumerate(data, 1):
        path = Path(item).expanduser()
        if not path.is_file():
            why = "is a folder" if path.is_dir() else "does not exist"
            raise AgentError(f"data file {str(item)!r} {why}", hint="pass existing files with --data (csv, parquet, xlsx, json)",
                             reason="bad_data")
        name = path.name if path.name not in seen else f"{number}-{path.name}"
        seen.add(name)
        refs.append({"param": "data" if number == 1 else f"data_{number}", "path": name, "source": str(path.resolve())})
    return refs


async def execute_agent_run(
    task: str,
    data: Sequence[str | Path] = (),
    *,
    graph: str = "analysis",
    backend: "str | KernelBackend | None" = None,
    settings: Settings | None = None,
    store: "Store | None" = None,
    budget: "Budget | None" = None,
    on_step: "StepHook | None" = None,
    approve: "Approver | None" = None,
    parent_id: int | None = None,
    schedule_id: str | None = None,
    session: "KernelSession | None" = None,
    extra_input: dict[str, Any] | None = None,
    on_run: "Callable[[int], Any] | None" = None,
    launched: "Mapping[str, Any] | None" = None,
) -> AgentOutcome:
    """Run ``graph`` on ``task`` as a recorded agent run; the outcome with answer, artifacts and notebook path.

    ``parent_id``: the run this one belongs to (an evaluation's batch run, a chat). ``schedule_id``: the schedule that fired it.
    ``session``: run in this live kernel (a chat's), which already has the data files; it is
    left running. ``extra_input``: more graph input (a chat's ``conversation`` and ``profile``).
    ``on_run(run_id)``: called as soon as the run exists. ``launched``: who started it from where
    (``{"user": ..., "via": "dashboard", ...}``), recorded as the run's ``launched`` event.
    """
    if not task.strip():
        raise AgentError("the task is empty", hint="say what the agent should find out or build", reason="no_task")
    if graph not in GRAPHS:
        raise AgentError(f"there is no agent graph {graph!r}", hint=f"use one of: {', '.join(GRAPHS)}", reason="no_graph")
    settings = settings or Settings()
    datasets = _datasets(data)
    attempt = _Attempt(task, graph, datasets, settings, budget, on_step, approve, parent_id)
    attempt.schedule_id = schedule_id
    attempt.session, attempt.extra_input, attempt.on_run = session, dict(extra_input or {}), on_run
    attempt.launched = dict(launched) if launched else None
    return await attempt.run(backend, store, run_id=None)


async def resume_agent_run(
    run_id: int,
    *,
    backend: "str | KernelBackend | None" = None,
    settings: Settings | None = None,
    store: "Store | None" = None,
    budget: "Budget | None" = None,
    on_step: "StepHook | None" = None,
    approve: "Approver | None" = None,
) -> AgentOutcome:
    """Continue an agent run that stopped (crash, kill -9, Ctrl-C, an endpoint that went away).

    A fresh kernel gets the data again and replays the cells the run finished (rebuilding
    its state), then the graph continues from its last checkpoint; a cell finished after
    that checkpoint is not run again, its journaled result is used.
    """
    settings = settings or Settings()
    own_store = store is None
    store = store or await asyncio.to_thread(_open_store, settings)  # opening reaps runs whose process is gone
    try:
        run = await asyncio.to_thread(store.get_run, run_id)
        if run.kind != "agent":
            raise AgentError(f"run {run_id} is a {run.kind} run, not an agent run", hint="`dsagent runs ls --kind agent` lists agent runs",
                             reason="not_agent")
        if run.status in ("succeeded", "unverified"):
            raise AgentError(f"run {run_id} already ended {run.status}; nothing to resume", hint="`dsagent runs show` shows it",
                             reason="done")
        if run.status in ("running", "queued"):
            raise AgentError(f"run {run_id} is {run.status} in process {run.owner_pid} on {run.owner_host}",
                             hint="wait for it, or stop that process first (a killed process's run is marked failed at the next open)",
                             reason="busy")
        params = run.params
        datasets = _datasets(params.get("data", []))
        attempt = _Attempt(params["task"], params.get("graph", "analysis"), datasets, settings, budget, on_step, approve)
        return await attempt.run(backend or run.backend, store, run_id=run_id)
    finally:
        if own_store:
            store.close()


class _Attempt:
    """One process's go at an agent run: a new run, or a resumed one."""

    def __init__(self, task: str, graph: str, datasets: list[dict[str, str]], settings: Settings, budget: "Budget | None",
                 on_step: "StepHook | None", approve: "Approver | None" = None, parent_id: int | None = None) -> None:
        self.task, self.graph, self.datasets, self.settings = task, graph, datasets, settings
        self.budget, self.on_step, self.approve, self.parent_id = budget, on_step, approve, parent_id
        self.schedule_id: str | None = None
        self.session: Any = None  # a live session to use (and keep), else one is started and shut down
        self.extra_input: dict[str, Any] = {}
        self.on_run: Any = None
        self.launched: dict[str, Any] | None = None  # who started the run from where (a ``launched`` event)

    async def run(self, backend: "str | KernelBackend | None", store: "Store | None", *, run_id: int | None) -> AgentOutcome:
        from dsagent.graphs.llm import LLMClient
        from dsagent.kernel_gateway.base import KernelBackend
        from dsagent.kernel_gateway.registry import get_backend

        settings = self.settings
        llm = LLMClient(settings)  # fails here, before any run exists, when no endpoint/key is configured
        if self.session is not None:
            try:
                return await self._recorded(llm, str(backend or settings.agent_backend), self.session, store, run_id)
            finally:
                await llm.aclose()
        kernels = backend if isinstance(backend, KernelBackend) else get_backend(backend or settings.agent_backend, settings, pool_size=0)
        own_store = store is None
        if store is None:
            store = await asyncio.to_thread(_open_store, settings)
        try:
            session = await kernels.start_session()
            try:
                return await self._recorded(llm, kernels.name, session, store, run_id)
            finally:
                await asyncio.shield(session.shutdown())
        finally:
            await llm.aclose()
            if own_store:
                store.close()
            if not isinstance(backend, KernelBackend):
                await kernels.aclose()

    async def _recorded(self, llm: Any, backend_name: str, session: Any, store: "Store", run_id: int | None) -> AgentOutcome:
        from dsagent.artifacts.recorder import RunRecorder
        from dsagent.graphs.context import AgentContext, Budget
        from dsagent.graphs.export import parameters_code
        from dsagent.secrets import Scrubber, secret_values
        from dsagent.graphs.tools import Toolbox
        from dsagent.kernel_gateway.base import run_hook

        params = {"task": self.task, "graph": self.graph, "data": [d["source"] for d in self.datasets]}
        recorder = RunRecorder(store, "agent", title=self.task[:200], params=params, backend=backend_name, run_id=run_id,
                               parent_id=self.parent_id, schedule_id=self.schedule_id)
        workspace = Workspace.from_settings(self.settings).ensure()
        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(recorder)
            if self.launched:  # rides with the run's first write (the setup cell): no transaction of its own
                await recorder.event("launched", self.launched, defer=True)
            if self.on_run is not None:  # before the checkpointer opens: a page follows the run from here
                await run_hook(self.on_run, recorder.run_id)
            saver = await stack.enter_async_context(open_checkpointer(workspace.checkpoints_path))
            if self.session is None:  # a caller's live session was prepared when it started
                await _prepare_kernel(session, self.datasets, list(secret_values()))
            app = _build(self.graph, saver)
            config = {"configurable": {"thread_id": str(recorder.run_id)},
                      "recursion_limit": 4 * (self.budget or Budget.from_settings(self.settings)).max_steps + 20}
            recorded: dict[int, Any] = {}
            next_cell = 0
            graph_input: dict[str, Any] | None = {"task": self.task, "datasets": self.datasets, "started_at": time.time(),
                                                  **self.extra_input}
            if run_id is not None:
                graph_input, recorded, next_cell = await self._replay(app, config, session, store, recorder)
            await recorder.attach(session)  # after the replay: files it re-creates are not new artifacts
            scrubber = Scrubber()
            toolbox = Toolbox(session, recorder, scrubber=scrubber, cell_timeout=self.settings.agent_cell_timeout,
                              setup_code=parameters_code(self.datasets, self.task, use_source=False), on_step=self.on_step,
                              next_cell=next_cell, recorded=recorded)
            context = AgentContext(llm=llm, toolbox=toolbox, recorder=recorder, scrubber=scrubber,
                                   budget=self.budget or Budget.from_settings(self.settings), on_step=self.on_step,
                                   approve=self.approve)
            return await _drive(app, graph_input, config, context, workspace)

    async def _replay(self, app: Any, config: dict[str, Any], session: Any, store: "Store", recorder: Any) -> tuple[Any, dict[int, Any], int]:
        """Rebuild the kernel state of a stopped run; (graph input, journaled cells past the checkpoint, next cell number)."""
        snapshot = await app.aget_state(config)
        events = await asyncio.to_thread(store.events, recorder.run_id)
        journal = {e.payload["cell"]: e.payload for e in events if e.type == "agent_cell"}
        checkpointed = list(snapshot.values.get("cells", [])) if snapshot.values else []
        known = {c["cell"] for c in checkpointed}
        after_checkpoint = {n: c for n, c in journal.items() if n not in known}
        replay = sorted([*checkpointed, *after_checkpoint.values()], key=lambda c: c["cell"])
        replayed = 0
        for cell in replay:
            if cell.get("status") != "ok":
                continue
            result = await session.execute(cell["code"], timeout=self.settings.agent_cell_timeout)
            replayed += 1
            if result.status != "ok":
                await recorder.event("agent_replay_failed", {"cell": cell["cell"], "status": result.status,
                                                             "error": result.error.evalue if result.error else None})
        next_cell = max(known, default=-1) + 1
        await recorder.event("agent_resume", {"checkpoint": bool(snapshot.values), "replayed_cells": replayed,
                                              "journaled_after_checkpoint": sorted(after_checkpoint),
                                              "next": list(snapshot.next) if snapshot.values else ["setup"]})
        from dsagent.kernel_gateway.base import run_hook

        await run_hook(self.on_step, "resume", {"replayed_cells": replayed, "reused": len(after_checkpoint)})
        if not snapshot.values:  # it stopped before the first checkpoint: start the graph over, reusing journaled cells
            return {"task": self.task, "datasets": self.datasets, "started_at": time.time()}, after_checkpoint, 0
        # the nodes after the checkpoint run again and number their cells as they did the first time;
        # a cell whose number and code match a journaled one is taken from the journal
        return None, after_checkpoint, next_cell


def _build(graph: str, saver: Any) -> Any:
    """The compiled graph with this run's checkpointer: compiled once per process (~10-30 ms of CPU each time
    otherwise, at every chat turn), then a shallow copy per run that only swaps the checkpointer."""
    return _compiled(graph).copy(update={"checkpointer": saver})


@functools.cache
def _compiled(graph: str) -> Any:
    if graph == "team":
        from dsagent.graphs.team import build_team_graph

        return build_team_graph()
    from dsagent.graphs.analysis import build_agent_graph

    return build_agent_graph(graph)


async def _prepare_kernel(session: Any, datasets: list[dict[str, str]], secret_names: list[str]) -> None:
    """Copy the datasets into the work dir and drop secret variables from the kernel's environment."""
    for ref in datasets:
        data = await asyncio.to_thread(Path(ref["source"]).read_bytes)
        await session.upload(ref["path"], data)
    if secret_names:
        await session.execute(f"import os as _o\nfor _k in {secret_names!r}: _o.environ.pop(_k, None)\ndel _o, _k", timeout=30)


@contextlib.asynccontextmanager
async def open_checkpointer(path: Path) -> AsyncIterator[Any]:
    """LangGraph's SQLite checkpointer on the workspace's checkpoints file.

    SQLite in WAL mode with ``synchronous=NORMAL``: no fsync per commit; a
    checkpoint survives a killed process, not a power cut (the store, which
    holds the run's record, keeps its own guarantees).
    """
    import aiosqlite
    from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

    async with aiosqlite.connect(str(path)) as conn:
        await conn.execute("PRAGMA journal_mode=WAL")
        await conn.execute("PRAGMA synchronous=NORMAL")
        yield AsyncSqliteSaver(conn)


async def _drive(app: Any, graph_input: dict[str, Any] | None, config: dict[str, Any], context: Any, workspace: Workspace) -> AgentOutcome:
    """Run (or continue, with ``graph_input=None``) the graph; keep the notebook; set the run's final status."""
    recorder = context.recorder
    state: dict[str, Any] = {}
    try:
        # checkpoints are written while the next step runs; resume finds a cell finished after
        # the last checkpoint in the store's journal (agent_cell events)
        state = await app.ainvoke(graph_input, config=config, context=context, durability="async")
        while "__interrupt__" in state:  # --approve: a tool call waits for a yes
            from langgraph.types import Command

            request = state["__interrupt__"][0].value
            await recorder.event("agent_approval_pending", request)  # a follower (the Chat page) shows the waiting cell
            answer = context.approve(request)
            if asyncio.iscoroutine(answer):
                answer = await answer
            state = await app.ainvoke(Command(resume=answer), config=config, context=context, durability="async")
    except (LLMUnavailable, LLMRequestError) as exc:
        state = dict((await app.aget_state(config)).values)
        state.update(status="failed", error=f"{type(exc).__name__}: {exc}")
        await context.step("finish", {"status": "failed", "error": state["error"]})
    except BaseException:
        state = dict((await asyncio.shield(app.aget_state(config))).values)
        await asyncio.shield(_keep_notebook(state, context, workspace))
        raise
    path, _ = await _keep_notebook(state, context, workspace)
    await recorder.event("llm_usage", context.llm.usage.to_dict())
    status = state.get("status") if state.get("status") in ("succeeded", "unverified") else "failed"
    run = await recorder.finish(status, error=state.get("error") if status != "succeeded" else None)
    return AgentOutcome(run, state.get("answer", ""), recorder.artifacts, path, state)


async def _keep_notebook(state: dict[str, Any], context: Any, workspace: Workspace) -> tuple[Path, list[Any]]:
    """Store the run's notebook as an artifact and write it under outputs/agents/."""
    from dsagent.artifacts.models import NewArtifact
    from dsagent.graphs.export import export_notebook

    recorder = context.recorder
    notebook = export_notebook(state, run_id=recorder.run_id)
    text = nbformat.writes(notebook)
    folder = workspace.outputs_dir / "agents"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"run-{recorder.run_id}.ipynb"
    await asyncio.to_thread(path.write_text, text, "utf-8")
    added = await recorder.add_artifacts([NewArtifact(path.name, "notebook", "application/x-ipynb+json", text.encode("utf-8"))])
    return path, added


def _open_store(settings: Settings) -> "Store":
    from dsagent.artifacts.store import Store

    store = Store(settings=settings)
    store.setup()
    return store
