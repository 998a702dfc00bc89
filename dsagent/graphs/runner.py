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
import time
from collections.abc import AsyncIterator, Sequence
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
    from dsagent.graphs.context import Budget, StepHook
    from dsagent.kernel_gateway.base import KernelBackend

__all__ = ["AgentOutcome", "ask", "execute_agent_run", "open_checkpointer"]

GRAPHS = ("analysis",)


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
) -> AgentOutcome:
    """Run ``graph`` on ``task`` as a recorded agent run; the outcome with answer, artifacts and notebook path."""
    from dsagent.artifacts.recorder import RunRecorder
    from dsagent.graphs.context import AgentContext, Budget
    from dsagent.graphs.llm import LLMClient
    from dsagent.graphs.secrets import Scrubber, secret_values
    from dsagent.kernel_gateway.base import KernelBackend
    from dsagent.kernel_gateway.registry import get_backend

    if not task.strip():
        raise AgentError("the task is empty", hint="say what the agent should find out or build", reason="no_task")
    if graph not in GRAPHS:
        raise AgentError(f"there is no agent graph {graph!r}", hint=f"use one of: {', '.join(GRAPHS)}", reason="no_graph")
    settings = settings or Settings()
    datasets = _datasets(data)
    llm = LLMClient(settings)  # fails here, before any run exists, when no endpoint/key is configured
    kernels = backend if isinstance(backend, KernelBackend) else get_backend(backend or settings.agent_backend, settings, pool_size=0)
    own_store = store is None
    if store is None:
        store = await asyncio.to_thread(_open_store, settings)
    scrubber = Scrubber()
    try:
        session = await kernels.start_session()
        try:
            params = {"task": task, "graph": graph, "data": [d["source"] for d in datasets]}
            async with RunRecorder(store, "agent", title=task[:200], params=params, backend=kernels.name) as recorder:
                await _prepare_kernel(session, datasets, list(secret_values()))
                await recorder.attach(session)
                from dsagent.graphs.export import parameters_code
                from dsagent.graphs.tools import Toolbox

                toolbox = Toolbox(session, recorder, scrubber=scrubber, cell_timeout=settings.agent_cell_timeout,
                                  setup_code=parameters_code(datasets, task, use_source=False), on_step=on_step)
                context = AgentContext(llm=llm, toolbox=toolbox, recorder=recorder, scrubber=scrubber,
                                       budget=budget or Budget.from_settings(settings), on_step=on_step)
                return await _run_graph(graph, task, datasets, context, settings, recorder)
        finally:
            await asyncio.shield(session.shutdown())
    finally:
        await llm.aclose()
        if own_store:
            store.close()
        if not isinstance(backend, KernelBackend):
            await kernels.aclose()


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

    It runs SQLite in WAL mode; ``synchronous=NORMAL`` drops the fsync per commit
    (a checkpoint still survives a killed process, just not a power cut), which
    took ~20 ms of each agent step here.
    """
    import aiosqlite
    from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

    async with aiosqlite.connect(str(path)) as conn:
        await conn.execute("PRAGMA journal_mode=WAL")
        await conn.execute("PRAGMA synchronous=NORMAL")
        yield AsyncSqliteSaver(conn)


async def _run_graph(graph: str, task: str, datasets: list[dict[str, str]], context: Any, settings: Settings, recorder: Any) -> AgentOutcome:
    from dsagent.graphs.analysis import build_analysis_graph

    workspace = Workspace.from_settings(settings).ensure()
    config = {"configurable": {"thread_id": str(recorder.run_id)}, "recursion_limit": 4 * context.budget.max_steps + 20}
    async with open_checkpointer(workspace.checkpoints_path) as saver:
        app = build_analysis_graph(saver)
        state: dict[str, Any] = {}
        try:
            state = await app.ainvoke({"task": task, "datasets": datasets, "started_at": time.time()}, config=config, context=context,
                                     durability="async")
        except (LLMUnavailable, LLMRequestError) as exc:
            state = dict((await app.aget_state(config)).values)
            state.update(status="failed", error=f"{type(exc).__name__}: {exc}")
            await context.step("finish", {"status": "failed", "error": state["error"]})
        except BaseException:
            state = dict((await asyncio.shield(app.aget_state(config))).values)
            await asyncio.shield(_keep_notebook(state, context, workspace))
            raise
        path, artifacts = await _keep_notebook(state, context, workspace)
    await recorder.event("llm_usage", context.llm.usage.to_dict())
    status = "succeeded" if state.get("status") == "succeeded" else "failed"
    run = await recorder.finish(status, error=state.get("error") if status == "failed" else None)
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
