"""Chat commands: ``chat [NAME]`` (a conversation in the terminal) and ``chats ls|rename|rm|export``."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

__all__ = ["register"]

HELP = """commands: /turns (list turns), /export [PATH] (the chat as a notebook), /rename NAME, /quit (or Ctrl-D);
Ctrl-C stops a running turn (the chat goes on); anything else is the next question"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("chat", help="talk with the agents in a named conversation: one kernel, turns that build on each other")
    p.add_argument("name", nargs="?", help="the chat to open, or to create when no chat has this name (default: a new chat)")
    p.add_argument("--data", nargs="+", default=[], metavar="FILE", help="data files of a new chat (`data`, `data_2`, ... in the kernel)")
    p.add_argument("--agent", choices=["analysis", "coding", "team"], help="who answers (a new chat's default: analysis; "
                   "for an existing chat, this session's turns)")
    p.add_argument("--backend", help="kernel backend of a new chat (default: the 'agent_backend' setting, sandbox)")
    p.add_argument("--model", help="model for every role (default: the llm_model settings)")
    p.add_argument("--approve", action="store_true", help="show each cell before it runs: y runs it, e edits it, anything else refuses")
    p.set_defaults(func=cmd_chat)

    chats = sub.add_parser("chats", help="list, rename, delete or export chats")
    verbs = chats.add_subparsers(dest="verb", metavar="VERB", required=True)
    p = verbs.add_parser("ls", help="the chats, newest first")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--cursor", help="next_cursor of the previous page")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_ls)
    p = verbs.add_parser("rename", help="give a chat another name")
    p.add_argument("chat", help="name or id")
    p.add_argument("new_name")
    p.set_defaults(func=cmd_rename)
    p = verbs.add_parser("rm", help="delete a chat (its runs, notebooks and artifacts stay unless --purge)")
    p.add_argument("chat", help="name or id")
    p.add_argument("--purge", action="store_true", help="delete its runs, events and artifacts too (bytes freed by `dsagent gc`)")
    p.set_defaults(func=cmd_rm)
    p = verbs.add_parser("export", help="the whole chat as one notebook with a parameters cell (re-run it with `dsagent run`)")
    p.add_argument("chat", help="name or id")
    p.add_argument("-o", "--output", help="where to write it (default: <workspace>/outputs/chats/chat-ID.ipynb)")
    p.set_defaults(func=cmd_export)


def _store() -> Any:
    from dsagent.artifacts.store import Store

    store = Store()
    store.setup()
    return store


def _opened_store() -> Any:
    """The workspace's store for one command (closed on the way out, errors included)."""
    from dsagent.artifacts.store import Store

    return Store.open()


def cmd_ls(args: argparse.Namespace) -> int:
    with _opened_store() as store:
        page = store.chats.list(limit=args.limit, cursor=args.cursor)
    if args.json:
        print(json.dumps({"items": [c.to_json() for c in page.items], "next_cursor": page.next_cursor}))
        return 0
    if not page.items:
        print("no chats yet: `dsagent chat NAME --data FILE` starts one")
    for c in page.items:
        when = c.updated.strftime("%Y-%m-%d %H:%M") if c.updated else ""
        files = ", ".join(d["path"] for d in c.datasets) or "no data"
        state = " (answering)" if c.status == "running" else " (open)" if c.held else ""
        print(f"{c.id:>5}  {c.name}{state}  [{c.graph}, {c.backend}]  {c.turns} turn(s)  {files}  {when}")
    if page.next_cursor:
        print(f"more: dsagent chats ls --cursor {page.next_cursor}")
    return 0


def cmd_rename(args: argparse.Namespace) -> int:
    from dsagent.graphs.chat import rename_chat

    with _opened_store() as store:
        record = rename_chat(store, args.chat, args.new_name)
    print(f"chat {record.id} is now {record.name!r}")
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    from dsagent.graphs.chat import delete_chat

    with _opened_store() as store:
        deleted = delete_chat(store, args.chat, purge=args.purge)
    print(f"deleted the chat and {len(deleted)} run(s); `dsagent gc` frees their bytes" if args.purge
          else "deleted the chat; its runs, notebooks and artifacts are kept (`dsagent runs ls`)")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from dsagent.graphs.chat_export import export_chat

    with _opened_store() as store:
        path = export_chat(store, args.chat, args.output)
    print(f"notebook: {path}\nre-run it on other data: dsagent run {path} -p data /abs/path/other.csv")
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    import asyncio

    from dsagent.cli import EXIT_OK

    asyncio.run(_repl(args))
    return EXIT_OK


class _Lines:
    """stdin lines from a daemon thread (a blocked read never holds the process at exit), shared by the
    prompt and the approver."""

    def __init__(self) -> None:
        import asyncio
        import threading

        self.queue: asyncio.Queue[str | None] = asyncio.Queue()
        loop = asyncio.get_running_loop()

        def read() -> None:
            for line in sys.stdin:
                loop.call_soon_threadsafe(self.queue.put_nowait, line.rstrip("\n"))
            loop.call_soon_threadsafe(self.queue.put_nowait, None)

        threading.Thread(target=read, name="dsagent-chat-stdin", daemon=True).start()

    async def next(self, prompt: str = "") -> str | None:
        if prompt:
            print(prompt, end="", flush=True)
        return await self.queue.get()


async def _repl(args: argparse.Namespace) -> None:
    import asyncio
    from datetime import datetime

    from dsagent.cli.agents import StepPrinter
    from dsagent.errors import NotFound
    from dsagent.graphs.chat import Chat, create_chat
    from dsagent.settings import Settings

    settings = Settings()
    if args.model:
        settings = settings.replace(llm_model=args.model, llm_model_planner="", llm_model_coder="", llm_model_reviewer="")
    from dsagent.graphs.llm import LLMClient

    await LLMClient(settings).aclose()  # no endpoint or key: say so before a kernel starts
    store = await asyncio.to_thread(_store)
    name = args.name or datetime.now().strftime("chat %Y-%m-%d %H:%M:%S")
    try:
        try:
            record = await asyncio.to_thread(store.chats.get, name)
            if args.data:
                print(f"note: chat {record.name!r} exists; its datasets stay as they are (--data is for new chats)", file=sys.stderr)
        except NotFound:
            record = await asyncio.to_thread(create_chat, store, name, args.data, graph=args.agent or "analysis", backend=args.backend)
            print(f"new chat {record.name!r} (id {record.id}), {record.graph} agent on {record.backend}")
        steps = StepPrinter(sys.stdout)
        print(f"opening chat {record.name!r}: starting its kernel ...", flush=True)
        chat = await Chat.open(record.id, store=store, settings=settings, on_step=steps)
        async with chat:
            turns = await asyncio.to_thread(chat.turns)
            print(f"ready: {len(turns)} earlier turn(s), datasets: {', '.join(d['param'] + '=' + d['path'] for d in record.datasets) or 'none'}")
            print(HELP)
            await _loop(chat, args, steps, _Lines())
    finally:
        store.close()


async def _loop(chat: Any, args: argparse.Namespace, steps: Any, lines: _Lines) -> None:
    import asyncio
    import signal

    from dsagent.errors import DsagentError

    loop = asyncio.get_running_loop()
    main = asyncio.current_task()

    def on_interrupt() -> None:  # Ctrl-C: stop the running turn, else leave
        if chat.running is not None:
            print("\nstopping the turn ...", flush=True)
            asyncio.ensure_future(chat.stop())
        elif main is not None:
            main.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_interrupt)
    try:
        while True:
            try:
                line = await lines.next(f"\n{chat.record.name}> ")
            except asyncio.CancelledError:
                print()
                return
            if line is None:
                print()
                return
            text = line.strip()
            if not text:
                continue
            try:
                if text.startswith("/"):
                    if not await _command(chat, text):
                        return
                    continue
                approve = _terminal_approver(lines) if args.approve else None
                turn = await chat.start(text, graph=args.agent, on_step=steps, approve=approve)
                outcome = await turn.wait()
                _print_outcome(outcome)
            except DsagentError as exc:
                print(f"error: {exc}" + (f"\n  hint: {exc.hint}" if exc.hint else ""), file=sys.stderr)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


async def _command(chat: Any, text: str) -> bool:
    """Run a /command; False means: leave."""
    import asyncio

    from dsagent.graphs.chat import rename_chat
    from dsagent.graphs.chat_export import export_chat

    verb, _, rest = text.partition(" ")
    if verb in ("/quit", "/exit", "/q"):
        return False
    if verb == "/turns":
        for t in await asyncio.to_thread(chat.turns):
            print(f"  {t.number}. [{t.status}, run {t.run_id}] {t.task}" + (f"\n     {t.answer.strip()[:200]}" if t.answer else ""))
    elif verb == "/export":
        path = await asyncio.to_thread(export_chat, chat.store, chat.id, rest.strip() or None)
        print(f"notebook: {path}")
    elif verb == "/rename" and rest.strip():
        chat.record = await asyncio.to_thread(rename_chat, chat.store, chat.id, rest.strip())
        print(f"renamed to {chat.record.name!r}")
    else:
        print(HELP)
    return True


def _print_outcome(outcome: Any) -> None:
    run = outcome.run
    print()
    if run.status == "cancelled":
        print(f"turn stopped (run {run.id} cancelled; its partial notebook is kept). The chat goes on.")
        return
    print(outcome.answer.strip() or "(no answer)")
    shown = [a for a in outcome.artifacts if a.kind not in ("text", "notebook")]
    if shown:
        print("artifacts: " + ", ".join(f"#{a.id} {a.name}" for a in shown))
    print(f"run {run.id}: {run.status}" + (f": {run.error}" if run.error else ""))


def _terminal_approver(lines: _Lines) -> Any:
    """Run / Edit / Reject from the terminal: y runs, e reads new code up to a line with a single '.',
    anything else refuses and is told to the agent as the reason."""

    async def approve(request: dict[str, Any]) -> dict[str, Any]:
        arguments = request.get("arguments", {})
        shown = arguments.get("code") or arguments.get("command") or f"{arguments.get('path')}:\n{arguments.get('content', '')}"
        print(f"\n--- the agent wants to {request.get('tool')}:\n{shown}\n---")
        answer = (await lines.next("run it? [y = yes, e = edit, anything else = no (told to the agent as the reason)] ")) or ""
        if answer.strip().lower() in ("y", "yes"):
            return {"action": "run"}
        if answer.strip().lower() in ("e", "edit"):
            print("type the code to run instead; end with a line holding only '.'")
            code: list[str] = []
            while (line := await lines.next()) is not None and line.strip() != ".":
                code.append(line)
            return {"action": "edit", "code": "\n".join(code)}
        return {"action": "reject", "reason": answer.strip() or "refused"}

    return approve
