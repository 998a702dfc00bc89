"""``dsagent`` with timestamps at each hop of a chat turn, for ``bench/chat.py --trace``.

Run as ``python bench/chat_trace.py TRACE_FILE serve ...``: it wraps the functions a question passes
through on its way from the websocket to the first step on the page (the page's Enter handler, the
ChatHost, the library's run creation, graph build, LLM call and step write, the page's wake-up, store
read and document update, Bokeh's websocket writes), appends ``{"t": time.time(), "hop": ...}`` lines
to TRACE_FILE, then runs the ordinary ``dsagent`` command. Nothing of dsagent changes; a hop whose
function is gone is reported as missing (stderr) and left out.
"""

from __future__ import annotations

import functools
import inspect
import json
import sys
import threading
import time
from typing import Any, Callable

_lock = threading.Lock()
_out: Any = None


def mark(hop: str, **fields: Any) -> None:
    line = json.dumps({"t": time.time(), "hop": hop, "thread": threading.current_thread().name, **fields})
    with _lock:
        _out.write(line + "\n")
        _out.flush()


def _wrap(owner: Any, name: str, hop: str, *, end: bool = True, detail: Callable[..., dict[str, Any]] | None = None) -> None:
    original = getattr(owner, name, None)
    if original is None:
        print(f"chat_trace: {owner.__name__}.{name} is gone; hop {hop!r} left out", file=sys.stderr)
        return
    if isinstance(inspect.getattr_static(owner, name), staticmethod):
        original = inspect.getattr_static(owner, name).__func__

    def fields(args: Any, kwargs: Any) -> dict[str, Any]:
        try:
            return detail(*args, **kwargs) if detail else {}
        except Exception:
            return {}

    if inspect.iscoroutinefunction(original):
        @functools.wraps(original)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            mark(hop, **fields(args, kwargs))
            try:
                return await original(*args, **kwargs)
            finally:
                if end:
                    mark(hop + ":end")
    else:
        @functools.wraps(original)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            mark(hop, **fields(args, kwargs))
            try:
                return original(*args, **kwargs)
            finally:
                if end:
                    mark(hop + ":end")
    setattr(owner, name, wrapper)


def install() -> None:
    from bokeh.server.views.ws import WSHandler
    from panel.chat.input import ChatAreaInput

    from dsagent.artifacts.recorder import RunRecorder
    from dsagent.artifacts.store import Store
    from dsagent.graphs import analysis, chat, context, runner
    from dsagent.graphs.llm import LLMClient
    from dsagent.kernel_gateway.local import LocalSession
    from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver
    from dsagent.panel_app import chat_host, chat_page

    _wrap(ChatAreaInput, "_process_event", "page: Enter event in (websocket)")
    view = chat_page._ChatView
    _wrap(view, "_on_question", "page: question handler")
    _wrap(view, "_start_turn", "page: start turn")
    _wrap(view, "_wake", "page: woken by the host", end=False)
    _wrap(view, "_poll", "page: store read")
    _wrap(view, "_show", "page: document update")
    _wrap(chat_host.ChatHost, "start", "host: start")
    _wrap(chat.Chat, "start", "library: Chat.start")
    _wrap(RunRecorder, "__aenter__", "library: run created")
    _wrap(runner, "open_checkpointer", "library: checkpointer", end=False)
    _wrap(runner, "_build", "library: graph build")
    _wrap(RunRecorder, "attach", "library: capture attach")
    _wrap(runner, "_drive", "library: drive graph")
    _wrap(AsyncSqliteSaver, "aget_tuple", "checkpointer: get")
    _wrap(AsyncSqliteSaver, "aput", "checkpointer: put")
    _wrap(LocalSession, "execute", "kernel: execute")
    _wrap(LocalSession, "list_files", "kernel: list files")
    _wrap(RunRecorder, "record_cell", "library: record cell")
    _wrap(analysis, "setup", "graph: setup node")
    _wrap(analysis, "plan", "graph: plan node")
    _wrap(LLMClient, "chat", "llm: request")
    _wrap(context.AgentContext, "step", "library: step", detail=lambda self, kind, *a, **k: {"kind": kind})
    _wrap(Store, "append_events", "store: append events", detail=lambda self, run_id, events, *a, **k: {
        "types": [e[0] for e in events]})
    _wrap(WSHandler, "write_message", "bokeh: websocket write", end=False,
          detail=lambda self, message, *a, **k: {"bytes": len(message)})


def main() -> int:
    global _out
    _out = open(sys.argv[1], "a", buffering=1)
    install()
    from dsagent.cli import main as dsagent_main

    return dsagent_main(sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
