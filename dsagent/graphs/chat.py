"""Conversations with the agents: a named chat, one kernel, a sequence of turns.

::

    record = create_chat(store, "sales", ["sales.csv"])          # a chat run + its row; the data copied in
    async with await Chat.open("sales", store=store) as chat:    # a kernel; earlier turns replayed into it
        turn = await chat.start("Plot revenue by month")         # returns once the turn's run exists
        turn.run_id                                              # follow store.events(turn.run_id) meanwhile
        outcome = await turn.wait()
        await chat.ask("Which month grew fastest?")              # same kernel: `df` from turn 1 is there
        # chat.stop() cancels the running turn; chat.pending / chat.decide(...) answer approvals
    export_chat(store, record.id)                                # one notebook of every turn, re-runnable

Each turn is an ordinary agent run (``runner.execute_agent_run``) whose parent
is the chat's run, in the chat's live session; its prompt carries the earlier
turns (``chat_history.render_history``). The chat's own run gets an event per
turn started/finished, so a follower of the chat sees turns appear, and a
follower of a turn's run sees its steps (plan, cells, review, tokens, answer).
Opening a chat in a new process (after a restart or a crash) starts a fresh
kernel and replays every cell the turns finished cleanly, so the state is back.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dsagent.errors import ChatError
from dsagent.graphs.runner import GRAPHS, AgentOutcome, _datasets, _open_store, execute_agent_run
from dsagent.settings import Settings
from dsagent.workspace import Workspace

if TYPE_CHECKING:
    from dsagent.artifacts.chats import ChatRecord
    from dsagent.artifacts.models import Event, Page
    from dsagent.artifacts.store import Store
    from dsagent.graphs.chat_history import TurnRecord
    from dsagent.graphs.context import Approver, Budget, StepHook
    from dsagent.kernel_gateway.base import KernelBackend, KernelSession

__all__ = ["Chat", "PendingApproval", "Turn", "chat_data_dir", "create_chat", "delete_chat", "follow_events", "list_chats",
           "rename_chat"]


def chat_data_dir(settings: Settings, chat_id: int) -> Path:
    """Where a chat keeps its own copy of its datasets (so it outlives the user's files)."""
    return Workspace.from_settings(settings).home / "chats" / str(chat_id) / "data"


def create_chat(store: "Store", name: str, data: Sequence[str | Path] = (), *, graph: str = "analysis",
                backend: str | None = None) -> "ChatRecord":
    """A new, closed chat; its datasets are copied into the workspace (``chat_data_dir``)."""
    if graph not in GRAPHS:
        raise ChatError(f"there is no agent graph {graph!r}", hint=f"use one of: {', '.join(GRAPHS)}", reason="graph")
    datasets = _datasets(data)
    record = store.chats.create(name, graph=graph, backend=backend or store.settings.agent_backend, datasets=datasets)
    folder = chat_data_dir(store.settings, record.id)
    folder.mkdir(parents=True, exist_ok=True)
    for ref in datasets:
        shutil.copyfile(ref["source"], folder / ref["path"])
    return record


def list_chats(store: "Store", *, limit: int = 50, cursor: str | None = None) -> "Page[ChatRecord]":
    """The chats, newest first, one page at a time."""
    return store.chats.list(limit=limit, cursor=cursor)


def rename_chat(store: "Store", chat: int | str, name: str) -> "ChatRecord":
    return store.chats.rename(store.chats.get(chat).id, name)


def delete_chat(store: "Store", chat: int | str, *, purge: bool = False) -> list[int]:
    """Remove a chat; its runs and artifacts stay unless ``purge`` (see ``ChatTable.delete``)."""
    record = store.chats.get(chat)
    holder = store.chats.holder(record.id)
    if holder is not None:
        raise ChatError(f"chat {record.name!r} is open in process {holder.pid} on {holder.host}",
                        hint="close it there first (leave `dsagent chat`, or close its page)", reason="open")
    deleted = store.chats.delete(record.id, purge=purge)
    if purge:
        shutil.rmtree(chat_data_dir(store.settings, record.id).parent, ignore_errors=True)
    return deleted


async def follow_events(store: "Store", run_id: int, *, after: int = 0, poll: float = 0.25) -> AsyncIterator["Event"]:
    """The events of a run (a turn, or a chat's own run) as they are written, from ``seq > after``; ends
    once the run has finished and every event is read (a chat's run goes on while the chat exists).
    What a page shows of a turn: ``agent_plan``, ``cell_started``, ``agent_cell`` (code, outputs with plots,
    artifacts), ``agent_tokens``, ``agent_delegate``, ``agent_approval_pending``, ``agent_review``,
    ``agent_answer``, ``status``."""
    while True:
        done = (await asyncio.to_thread(store.get_run, run_id)).done  # before the events, so none is missed
        batch = await asyncio.to_thread(store.events, run_id, after=after)
        for event in batch:
            yield event
        after = batch[-1].seq if batch else after
        if done and not batch:
            return
        if not batch:
            await asyncio.sleep(poll)


@dataclass
class PendingApproval:
    """A cell waiting for the user: ``request`` is ``{"tool", "arguments"}`` (the code is in the arguments)."""

    run_id: int | None
    request: dict[str, Any]
    future: "asyncio.Future[dict[str, Any]]" = field(repr=False)


@dataclass
class Turn:
    """A turn in flight: its run exists (``run_id``); ``wait()`` gives its outcome."""

    task: str
    run_id: int | None
    _task: "asyncio.Task[AgentOutcome]" = field(repr=False)

    @property
    def done(self) -> bool:
        return self._task.done()

    async def wait(self) -> AgentOutcome:
        return await asyncio.shield(self._task)


class Chat:
    """An open chat: its record, one live kernel session, and at most one running turn."""

    def __init__(self, record: "ChatRecord", store: "Store", settings: Settings, kernels: "KernelBackend",
                 session: "KernelSession", *, own_store: bool, own_backend: bool) -> None:
        self.record, self.store, self.settings = record, store, settings
        self.kernels, self.session = kernels, session
        self._own_store, self._own_backend = own_store, own_backend
        self._turn: Turn | None = None
        self.pending: PendingApproval | None = None  # a cell waiting for decide() (approve=True turns)
        self._announcing: asyncio.Future[None] | None = None
        self._history: list["TurnRecord"] = []  # the turns so far, read once at open, then one per finished turn
        self.closed = False

    @property
    def id(self) -> int:
        return self.record.id

    # -- opening and closing ----------------------------------------------------

    @classmethod
    async def open(cls, chat: int | str, *, settings: Settings | None = None, store: "Store | None" = None,
                   backend: "str | KernelBackend | None" = None, on_step: "StepHook | None" = None) -> "Chat":
        """Open a chat: start its kernel, give it the datasets, replay the earlier turns' cells."""
        from dsagent.kernel_gateway.base import KernelBackend
        from dsagent.kernel_gateway.registry import get_backend

        settings = settings or (store.settings if store is not None else Settings())
        own_store = store is None
        store = store or await asyncio.to_thread(_open_store, settings)
        try:
            record = await asyncio.to_thread(store.chats.get, chat)
            await asyncio.to_thread(store.chats.set_open, record.id, True)  # refuses a chat another live process holds
            own_backend = not isinstance(backend, KernelBackend)
            try:
                kernels = backend if isinstance(backend, KernelBackend) else get_backend(backend or record.backend, settings, pool_size=0)
            except BaseException:
                await asyncio.to_thread(store.chats.set_open, record.id, False)
                raise
        except BaseException:
            if own_store:
                store.close()
            raise
        session = None
        try:
            session = await kernels.start_session()
            opened = cls(record, store, settings, kernels, session, own_store=own_store, own_backend=own_backend)
            await opened._restore(on_step)
            return opened
        except BaseException:
            if session is not None:
                await asyncio.shield(session.shutdown())
            if own_backend:
                await kernels.aclose()
            await asyncio.shield(asyncio.to_thread(store.chats.set_open, record.id, False))
            if own_store:
                store.close()
            raise

    async def __aenter__(self) -> "Chat":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop a running turn, shut the kernel down, mark the chat closed."""
        if self.closed:
            return
        self.closed = True
        try:
            await self.stop()
        finally:
            try:
                await asyncio.shield(self.session.shutdown())
                if self._own_backend:
                    await self.kernels.aclose()
            finally:
                await asyncio.shield(asyncio.to_thread(self.store.chats.set_open, self.id, False))
                if self._own_store:
                    self.store.close()

    async def _restore(self, on_step: "StepHook | None") -> None:
        """Datasets into the work dir, secrets out of the kernel, then every clean cell of every turn again."""
        from dsagent.graphs.chat_history import load_turns, replay_cells
        from dsagent.graphs.runner import _prepare_kernel
        from dsagent.secrets import secret_values
        from dsagent.kernel_gateway.base import run_hook

        started = time.monotonic()
        folder = chat_data_dir(self.settings, self.id)
        refs = []
        for ref in self.record.datasets:
            copy = folder / ref["path"]
            source = copy if copy.is_file() else Path(ref["source"])
            if not source.is_file():
                raise ChatError(f"dataset {ref['path']!r} of chat {self.record.name!r} is gone ({copy} and {ref['source']})",
                                hint="put the file back, or start a new chat with the data", reason="data")
            refs.append({**ref, "source": str(source)})
        await _prepare_kernel(self.session, refs, list(secret_values()))
        turns = self._history = await asyncio.to_thread(load_turns, self.store, self.id)
        cells = replay_cells(turns)
        failed = []
        for number, (run_id, cell) in enumerate(cells, 1):
            result = await self.session.execute(cell["code"], timeout=self.settings.agent_cell_timeout)
            if result.status != "ok":
                failed.append({"run_id": run_id, "cell": cell["cell"], "status": result.status,
                               "error": result.error.evalue if result.error else None})
        summary = {"turns": len(turns), "replayed_cells": len(cells), "failed": failed,
                   "seconds": round(time.monotonic() - started, 3), "backend": self.kernels.name}
        await asyncio.to_thread(self.store.chats.touch, self.id, [("chat_opened", summary)])
        if turns:
            await run_hook(on_step, "restore", summary)

    # -- turns ------------------------------------------------------------------

    def turns(self) -> list["TurnRecord"]:
        """The chat's turns so far, oldest first, from the store (blocking: call it in a thread from async code)."""
        from dsagent.graphs.chat_history import load_turns

        return load_turns(self.store, self.id)

    @property
    def running(self) -> Turn | None:
        return self._turn if self._turn is not None and not self._turn.done else None

    async def ask(self, task: str, **options: Any) -> AgentOutcome:
        """Run one turn to its end (see ``start`` for the options)."""
        return await (await self.start(task, **options)).wait()

    async def start(self, task: str, *, graph: str | None = None, on_step: "StepHook | None" = None,
                    approve: "Approver | bool | None" = None, budget: "Budget | None" = None, model: str | None = None,
                    launched: dict[str, Any] | None = None) -> Turn:
        """Start a turn; returns once its run exists (or raises why it could not start).

        ``approve``: None (cells run at once), True (each cell waits in ``pending`` until ``decide``),
        or a callable as ``execute_agent_run`` takes. ``model``: every role of this turn uses it
        (default: the llm_model settings). ``launched``: who asked from where, the turn run's ``launched`` event.
        """
        from dsagent.graphs.chat_history import render_history

        if self.closed:
            raise ChatError(f"chat {self.record.name!r} is closed", hint="open it again with Chat.open", reason="closed")
        if self.running is not None:
            raise ChatError(f"chat {self.record.name!r} is still answering {self.running.task!r}",
                            hint="wait for that turn, or stop it (chat.stop(), the Stop button, Ctrl-C)", reason="busy")
        earlier = list(self._history)
        extra = {"conversation": render_history(earlier, self.settings.chat_history_tokens)} if earlier else {}
        profile = next((t.profile for t in earlier if t.profile), "")
        if profile:
            extra["profile"] = profile
        approver = self._queue_approver if approve is True else (approve or None)
        created: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        def on_run(run_id: int) -> None:
            if not created.done():
                created.set_result(run_id)

        copies = [chat_data_dir(self.settings, self.id) / d["path"] for d in self.record.datasets]
        settings = self.settings
        if model:
            settings = settings.replace(llm_model=model, llm_model_planner="", llm_model_coder="", llm_model_reviewer="")
        coroutine = self._run_turn(task, graph or self.record.graph, copies, extra, on_step, approver, budget, on_run, created,
                                   settings, launched)
        running = asyncio.ensure_future(coroutine)
        await asyncio.wait([created, running], return_when=asyncio.FIRST_COMPLETED)
        if not created.done():  # it ended before its run existed: say why
            created.cancel()
            await running
        self._turn = Turn(task, created.result() if created.done() and not created.cancelled() else None, running)
        return self._turn

    async def _run_turn(self, task: str, graph: str, data: list[Path], extra: dict[str, Any], on_step: Any, approve: Any,
                        budget: Any, on_run: Any, created: "asyncio.Future[int]", settings: Settings,
                        launched: dict[str, Any] | None = None) -> AgentOutcome:
        try:
            outcome = await execute_agent_run(
                task, data, graph=graph, backend=self.kernels.name, settings=settings, store=self.store, budget=budget,
                on_step=on_step, approve=approve, parent_id=self.id, session=self.session, extra_input=extra,
                on_run=lambda run_id: self._turn_started(run_id, task, graph, on_run), launched=launched)
        except asyncio.CancelledError:
            if not created.done():
                raise
            run = await asyncio.shield(asyncio.to_thread(self.store.get_run, created.result()))
            outcome = AgentOutcome(run, "")
        except Exception:
            if created.done():  # the run exists and ended with the error: the chat still counts the turn
                run = await asyncio.shield(asyncio.to_thread(self.store.get_run, created.result()))
                if self._announcing is not None:
                    await asyncio.shield(self._announcing)
                await asyncio.shield(asyncio.to_thread(self._turn_finished, AgentOutcome(run, "")))
            raise
        if self._announcing is not None:
            await asyncio.shield(self._announcing)  # chat_turn_started stays before chat_turn_finished
        await asyncio.shield(asyncio.to_thread(self._turn_finished, outcome))
        return outcome

    def _turn_finished(self, outcome: AgentOutcome) -> None:
        from dsagent.graphs.chat_history import TurnRecord, load_turn, profile_of

        number = len(self._history) + 1
        state, run = outcome.state, outcome.run
        if state.get("cells") is not None and run.status in ("succeeded", "failed", "unverified"):  # the final state: no store read
            turn = TurnRecord(run.id, number, state.get("task", ""), run.params.get("graph", "analysis"), run.status,
                              plan=state.get("plan", ""), answer=state.get("answer", ""), error=run.error,
                              cells=list(state.get("cells", [])), reviews=list(state.get("reviews", [])))
            turn.profile = profile_of(turn.cells)
        else:  # cancelled or broken: what the store journaled
            turn = load_turn(self.store, run, number)
        self._history.append(turn)
        self.store.chats.touch(self.id, [("chat_turn_finished", {"run_id": outcome.run.id, "status": outcome.run.status,
                                                                 "answer": outcome.answer, "error": outcome.run.error})],
                               status="idle")

    def _turn_started(self, run_id: int, task: str, graph: str, on_run: Any) -> None:
        on_run(run_id)
        # written beside the turn, not before its first step (chat followers learn of it a moment later)
        self._announcing = asyncio.ensure_future(asyncio.to_thread(
            self.store.chats.touch, self.id, [("chat_turn_started", {"run_id": run_id, "task": task, "graph": graph})],
            status="running"))

    async def stop(self) -> AgentOutcome | None:
        """Cancel the running turn: its cell is interrupted, its run ends ``cancelled`` with its partial
        notebook; the kernel keeps what earlier cells made, and the chat takes the next turn."""
        turn = self.running
        if turn is None:
            return None
        turn._task.cancel()
        try:
            return await turn.wait()
        except asyncio.CancelledError:
            if asyncio.current_task() is not None and asyncio.current_task().cancelling():
                raise
            return None

    # -- approval ---------------------------------------------------------------

    async def _queue_approver(self, request: dict[str, Any]) -> dict[str, Any]:
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.pending = PendingApproval(self._turn.run_id if self._turn else None, request, future)
        try:
            return await future
        finally:
            self.pending = None

    def decide(self, action: str, *, code: str | None = None, reason: str = "") -> None:
        """Answer the waiting cell: ``run``, ``edit`` (``code`` is what runs and is recorded) or ``reject``
        (``reason`` is told to the model, which goes on)."""
        if action not in ("run", "edit", "reject"):
            raise ChatError(f"unknown decision {action!r}", hint="use run, edit or reject", reason="decision")
        if action == "edit" and not isinstance(code, str):
            raise ChatError("an edit needs the edited code", hint="pass code=... with the decision", reason="decision")
        pending = self.pending
        if pending is None or pending.future.done():
            raise ChatError("no cell is waiting for approval", hint="start the turn with approve=True", reason="no_pending")
        pending.future.set_result({"action": action, "code": code, "reason": reason})

