"""The chats a dashboard process holds open, run on their own event loop in their own thread.

A chat turn is agent work (LLM calls, kernel messages, store writes); on the
Panel server's event loop it would slow every page of every user. So one
``ChatHost`` per server runs every open ``Chat`` on a private asyncio loop in
a daemon thread; pages hand it work with ``await host.call(...)`` and follow
the turns through the store's event stream like any other follower, so a
reload or a second browser sees the same live run.

One open ``Chat`` per chat per process (the library refuses a second), shared
by every browser session looking at it. A chat nobody has used for
``dashboard_idle_timeout`` seconds (no turn running, no click) is closed: its
kernel shut down, an event on the chat's run says why; the next question
opens it again, replaying its cells. ``shutdown()`` (server stop, Ctrl-C)
closes them all, so no kernel outlives the server.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, Callable, Coroutine, TypeVar

if TYPE_CHECKING:
    from dsagent.artifacts.store import Store
    from dsagent.graphs.chat import Chat
    from dsagent.settings import Settings

__all__ = ["ChatHost"]

log = logging.getLogger(__name__)
T = TypeVar("T")
FINISHING_SECONDS = 5.0  # how long a question waits for the previous turn to finish recording before "still answering"


class ChatHost:
    """Open chats of one dashboard server; every public coroutine method runs on the host's loop via ``call``."""

    def __init__(self, settings: "Settings", *, idle_timeout: float | None = None) -> None:
        self.settings = settings
        self.idle_timeout = float(settings.dashboard_idle_timeout if idle_timeout is None else idle_timeout)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run_loop, name="dashboard-chats", daemon=True)
        self._chats: dict[int, "Chat"] = {}
        self._opening: dict[int, asyncio.Future[Chat]] = {}
        self._last_used: dict[int, float] = {}  # monotonic time of the last turn end or user action
        self._viewers: dict[int, set[str]] = {}  # browser sessions showing the chat
        self._busy: dict[int, int] = {}  # chats being opened or starting a turn: never idle
        self._watchers: dict[int, set[Callable[[], None]]] = {}  # pages to wake when a turn of the chat writes a step
        self._store: "Store | None" = None
        self._store_lock = threading.Lock()
        self._closed = False
        self._thread.start()
        self._reaper = self.submit(self._reap_idle_forever())
        self.submit(self._store_async())  # opened in the host's thread now, not on a page's event loop at first use

    def _run_loop(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    # -- handing work to the host's loop -------------------------------------

    def submit(self, coroutine: Coroutine[Any, Any, T]) -> "Future[T]":
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop)

    async def call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run ``coroutine`` on the host's loop; awaitable from the Panel server's loop, which never blocks on it."""
        return await asyncio.wrap_future(self.submit(coroutine))

    @property
    def store(self) -> "Store":
        """The host's own store: turns write with the normal lock timeout, not the dashboard readers' short one."""
        with self._store_lock:
            if self._store is None:
                from dsagent.graphs.runner import _open_store

                self._store = _open_store(self.settings)
            return self._store

    # -- viewers and activity (called from page sessions, any thread) ---------

    def attach(self, chat_id: int, session_id: str) -> None:
        self._viewers.setdefault(chat_id, set()).add(session_id)

    def detach(self, chat_id: int, session_id: str) -> None:
        self._viewers.get(chat_id, set()).discard(session_id)

    def watch(self, chat_id: int, wake: Callable[[], None]) -> None:
        """Call ``wake()`` (from the host's thread: it must be thread-safe) whenever a turn of the chat has
        written a step, so a page reads it from the store at once instead of at its next poll."""
        self._watchers.setdefault(chat_id, set()).add(wake)

    def unwatch(self, chat_id: int, wake: Callable[[], None]) -> None:
        self._watchers.get(chat_id, set()).discard(wake)

    def _wake(self, chat_id: int) -> None:
        for wake in list(self._watchers.get(chat_id, ())):
            try:
                wake()
            except Exception:  # a page that went away: it is detached at session end
                log.debug("waking a chat page failed", exc_info=True)

    def is_open(self, chat_id: int) -> bool:
        return chat_id in self._chats

    def pending(self, chat_id: int) -> dict[str, Any] | None:
        """The request of the cell waiting for approval in this chat, or None."""
        chat = self._chats.get(chat_id)
        pending = chat.pending if chat is not None else None
        return None if pending is None else {"run_id": pending.run_id, **pending.request}

    def running_run(self, chat_id: int) -> int | None:
        chat = self._chats.get(chat_id)
        turn = chat.running if chat is not None else None
        return turn.run_id if turn is not None else None

    # -- chats (coroutines for ``call``) ---------------------------------------

    async def open(self, chat_id: int) -> "Chat":
        """The chat, opened (kernel started, earlier cells replayed) unless it already is."""
        from dsagent.graphs.chat import Chat

        self._last_used[chat_id] = time.monotonic()
        if chat_id in self._chats:
            return self._chats[chat_id]
        self._busy[chat_id] = self._busy.get(chat_id, 0) + 1
        if chat_id not in self._opening:  # two sessions asking at once share one opening
            self._opening[chat_id] = asyncio.ensure_future(Chat.open(chat_id, settings=self.settings, store=await self._store_async()))
        try:
            chat = await asyncio.shield(self._opening[chat_id])
        finally:
            self._opening.pop(chat_id, None)
            self._busy[chat_id] -= 1
        self._chats[chat_id] = chat
        self._last_used[chat_id] = time.monotonic()  # a slow open (replay) is not idleness
        return chat

    async def start(self, chat_id: int, task: str, *, user: str, graph: str | None = None, model: str | None = None,
                    approve: bool = False) -> int:
        """Start a turn; its run id once the run exists. The run records who launched it from where."""
        self._busy[chat_id] = self._busy.get(chat_id, 0) + 1
        try:
            chat = await self.open(chat_id)
            if chat.running is not None:  # its end is shown (the status event is written) while it records its notebook
                await asyncio.wait([asyncio.ensure_future(chat.running.wait())], timeout=FINISHING_SECONDS)
            launched = {"user": user, "via": "dashboard", "chat": chat_id, "graph": graph or chat.record.graph, "model": model or "",
                        "approve": approve}  # written with the turn's first step, not before the page learns the run
            turn = await chat.start(task, graph=graph, model=model or None, approve=True if approve else None,
                                    on_step=lambda _kind, _payload: self._wake(chat_id), launched=launched)
        finally:
            self._busy[chat_id] -= 1
        if turn.run_id is None:  # it ended before its run existed: wait() raises why
            await turn.wait()
        self._last_used[chat_id] = time.monotonic()
        asyncio.ensure_future(self._note_end(chat_id, turn))
        self._wake(chat_id)
        return turn.run_id

    async def _note_end(self, chat_id: int, turn: Any) -> None:
        try:
            await turn.wait()
        except BaseException:  # the run records its own failure; the host only counts the activity
            pass
        self._last_used[chat_id] = time.monotonic()
        self._wake(chat_id)

    async def stop(self, chat_id: int, *, user: str) -> str:
        chat = self._chats.get(chat_id)
        turn = chat.running if chat is not None else None
        if chat is None or turn is None:
            return "nothing is running in this chat"
        self._last_used[chat_id] = time.monotonic()
        await asyncio.to_thread(self.store.append_events, turn.run_id, [("cancel_requested", {"user": user, "via": "dashboard"})])
        outcome = await chat.stop()
        status = outcome.run.status if outcome is not None else "cancelled"
        return f"turn stopped (run {turn.run_id} {status}; its partial notebook is kept)"

    async def decide(self, chat_id: int, action: str, *, code: str | None = None, reason: str = "", user: str = "anonymous") -> None:
        chat = self._chats.get(chat_id)
        if chat is None:
            from dsagent.errors import ChatError

            raise ChatError("no cell is waiting for approval", hint="the chat was closed; ask again", reason="no_pending")
        self._last_used[chat_id] = time.monotonic()
        run_id = chat.pending.run_id if chat.pending is not None else None
        chat.decide(action, code=code, reason=reason)
        if run_id is not None:
            await asyncio.to_thread(self.store.append_events, run_id, [("approval_decided", {"user": user, "via": "dashboard",
                                                                                              "action": action})])

    async def close(self, chat_id: int, *, why: str | None = None) -> None:
        """Close the chat (a running turn is stopped, the kernel shut down); ``why`` goes on its run as an event."""
        chat = self._chats.pop(chat_id, None)
        if chat is None:
            return
        await chat.close()
        if why:
            await asyncio.to_thread(self.store.append_events, chat_id, [("chat_closed", {"reason": why, "via": "dashboard"})])

    async def _store_async(self) -> "Store":
        if self._store is None:
            await asyncio.to_thread(lambda: self.store)
        return self.store

    # -- idle chats --------------------------------------------------------------

    async def _reap_idle_forever(self) -> None:
        period = max(0.2, min(30.0, self.idle_timeout / 4))
        while not self._closed:
            await asyncio.sleep(period)
            try:
                await self.reap_idle()
            except Exception:  # a busy store: try again next period
                log.warning("closing idle chats failed", exc_info=True)

    async def reap_idle(self) -> list[int]:
        """Close the chats with no running turn and nothing done for ``idle_timeout`` seconds; their ids."""
        now, closed = time.monotonic(), []
        for chat_id, chat in list(self._chats.items()):
            idle = now - self._last_used.get(chat_id, now)
            if chat.running is not None or chat.pending is not None or self._busy.get(chat_id) or idle < self.idle_timeout:
                continue
            viewers = len(self._viewers.get(chat_id, ()))
            why = (f"idle for {idle:.0f} s (dashboard_idle_timeout is {self.idle_timeout:g} s; "
                   f"{'no browser has it open' if not viewers else f'{viewers} browser session(s) open but unused'}): "
                   "kernel shut down; the next question restores it by replaying its cells")
            await self.close(chat_id, why=why)
            closed.append(chat_id)
        return closed

    # -- the end -------------------------------------------------------------------

    def shutdown(self, timeout: float = 20.0) -> None:
        """Close every chat (turns stopped, kernels shut down), then stop the loop; called when the server stops."""
        if self._closed:
            return
        self._closed = True

        async def close_all() -> None:
            self._reaper.cancel()
            await asyncio.gather(*(self.close(i, why="the dashboard server stopped") for i in list(self._chats)), return_exceptions=True)
            if self._store is not None:
                await asyncio.to_thread(self._store.close)

        try:
            self.submit(close_all()).result(timeout)
        except Exception:
            log.warning("closing the chats at shutdown failed", exc_info=True)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
