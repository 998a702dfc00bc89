"""Chat benchmark (the library's share; the dashboard's page adds its own on top).

Prints ONE JSON object to stdout (progress goes to stderr). The scripted
OpenAI-compatible server answers instantly; every turn is one ``run_code`` of a
trivial cell on a ``local`` kernel. Measured in the same process:

* ``first_step_ms``: from ``chat.start(task)`` to the first agent step a
  follower of the turn's run reads with ``follow_events`` (poll 20 ms): what a
  page could show at the earliest (the issue's browser target is 300 ms median);
* ``chat_turn_ms`` vs ``plain_run_ms``: a follow-up turn through ``chat.ask``
  against ``execute_agent_run`` with the same script in the same live session
  (no history, no chat events): ``chat_overhead_ms_per_turn`` is what the chat
  adds (reading the earlier turns back from the store, the history prompt, its
  two events);
* ``restore_ms`` vs ``replay_floor_ms``: ``Chat.open`` of a chat with the
  turns above (fresh kernel, data upload, every clean cell replayed) against a
  fresh kernel running the same cells with plain ``session.execute``.

The browser side (``--no-browser`` skips it): a real ``dsagent serve`` and a
real Chromium on the Chat page of a chat whose kernel is open, the same script.
Times are taken in the page: from the Enter keydown to the animation frame in
which the text is first rendered (a MutationObserver on every shadow root notes
it; Playwright's own waits poll with a 0, 20, 50, 100, 100, 500 ms backoff,
which added up to 500 ms to the figures before):

* ``browser_question_ms``: from pressing Enter to the question shown in the
  feed (the page shows it, with "starting the turn…", before any store or
  agent work);
* ``browser_first_step_ms``: from pressing Enter to the turn's plan visible in
  the page (target <= 300 ms median);
* ``dashboard_cost_ms_per_step``: (Enter to the answer visible, minus the
  library's ``chat_turn_ms`` above) / the turn's agent steps (target <= 20 ms);
* ``server_cpu_ms_per_turn``: CPU of the server process and its kernels per turn.

The next question goes ``READING_SECONDS`` after the turn's end line shows, as
a user reads the answer first (the page readies the next question's pane then).
``--compare TREE`` runs the browser part also against the dsagent in another
source tree (``git archive``), alternating, so both sides share the machine's
load; ``--trace`` prints every hop of each turn (page, host, library, store,
kernel, LLM, websocket, browser) with its time after Enter (``chat_trace.py``).

    .venv/bin/python bench/chat.py              # 6 rounds
    .venv/bin/python bench/chat.py --quick      # 2 rounds
    mkdir /tmp/old && git archive main dsagent | tar -x -C /tmp/old
    .venv/bin/python bench/chat.py --compare /tmp/old --pairs 2
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TARGET_FIRST_STEP_MS = 300.0
TARGET_COST_PER_STEP_MS = 20.0
READING_SECONDS = 0.5  # between a turn's end and the next question in the browser


def turn_script(i: int) -> list[Any]:
    from dsagent.testing.llm_server import Reply, ToolCall

    # a plan is {"steps": [...]} (or a numbered list) since plans fail closed: unreadable text ends the run
    return [Reply(json.dumps({"steps": [f"Plan {i}: count"]})), Reply(tool_calls=[ToolCall("run_code", {"code": f"x_{i} = {i}"})]), Reply(f"Done {i}."),
            Reply('{"verdict": "accept", "findings": []}', role="reviewer")]


async def main(turns: int) -> dict[str, Any]:
    from dsagent.artifacts.store import Store
    from dsagent.graphs.chat import Chat, create_chat, follow_events
    from dsagent.graphs.chat_history import load_turns, replay_cells
    from dsagent.graphs.runner import execute_agent_run
    from dsagent.kernel_gateway.local import LocalBackend
    from dsagent.settings import Settings
    from dsagent.testing.llm_server import LLMServer

    home = Path(tempfile.mkdtemp(prefix="dsagent-bench-chat-"))
    os.environ["OPENAI_API_KEY"] = "bench-key"
    data = home / "t.csv"
    data.write_text("a,b\n1,2\n3,4\n")
    first_step, chat_turn, plain_run, chat_cpu = [], [], [], []
    with LLMServer([]) as llm:
        settings = Settings(home=str(home / "ws"), llm_model="scripted-model", llm_base_url=llm.base_url, kernel_pool_size=0)
        with Store.open(settings=settings) as store:
            record = create_chat(store, "bench", [data], backend="local")
            async with await Chat.open(record.id, settings=settings, store=store) as chat:
                for i in range(turns + 1):  # turn 0 is the warm-up (imports, the profile cell)
                    llm.add(*turn_script(i))
                    start = time.perf_counter()
                    turn = await chat.start(f"follow {i}")
                    seen = None
                    async for event in follow_events(store, turn.run_id, poll=0.02):
                        if event.type.startswith("agent_"):
                            seen = time.perf_counter() - start
                            break
                    await turn.wait()
                    # unfollowed (a follower's reads share the store's lock), then the same as a plain agent run in
                    # the same kernel (no history, no chat events)
                    llm.add(*turn_script(i))
                    start, cpu_start = time.perf_counter(), time.process_time()
                    await chat.ask(f"count {i}")
                    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
                    llm.add(*turn_script(i))
                    start = time.perf_counter()
                    outcome = await execute_agent_run(f"count {i}", [data], backend="local", settings=settings, store=store,
                                                      session=chat.session, extra_input={"profile": "(bench)"})
                    plain = time.perf_counter() - start
                    assert outcome.run.status == "succeeded", outcome.run.error
                    if i:
                        first_step.append(seen * 1000)
                        chat_turn.append(wall * 1000)
                        chat_cpu.append(cpu * 1000)
                        plain_run.append(plain * 1000)
                    print(f"turn {i}: first step {seen * 1000:.0f} ms, chat turn {wall * 1000:.0f} ms, plain run {plain * 1000:.0f} ms",
                          file=sys.stderr)
            cells = replay_cells(await asyncio.to_thread(load_turns, store, record.id))
            start = time.perf_counter()
            async with await Chat.open(record.id, settings=settings, store=store):
                restore = time.perf_counter() - start
        async with LocalBackend(settings, pool_size=0) as backend:
            start = time.perf_counter()
            session = await backend.start_session()
            await session.upload("t.csv", data.read_bytes())
            for _, cell in cells:
                await session.execute(cell["code"], timeout=60)
            floor = time.perf_counter() - start
            await session.shutdown()
    median = lambda values: round(statistics.median(values), 1)  # noqa: E731
    return {
        "benchmark": "chat",
        "turns": turns,
        "first_step_ms": median(first_step),
        "target_first_step_ms_in_browser": TARGET_FIRST_STEP_MS,
        "chat_turn_ms": median(chat_turn),
        "chat_turn_cpu_ms": median(chat_cpu),
        "plain_run_ms": median(plain_run),
        "chat_overhead_ms_per_turn": round(median(chat_turn) - median(plain_run), 1),
        "restore_ms": round(restore * 1000, 1),
        "replayed_cells": len(cells),
        "replay_floor_ms": round(floor * 1000, 1),
        "restore_over_floor": round(restore / floor, 2),
        "method": "medians over the turns after a warm-up turn; the plain run is execute_agent_run in the chat's own "
                  "session right after each turn; the floor starts a kernel and runs the replayed cells with session.execute",
    }


# In the page: when Enter went down and when each watched text was first rendered (Playwright's own waits poll with a
# backoff of 0, 20, 50, 100, 100, 500, 500... ms, which would add up to 500 ms to a figure). A MutationObserver on the
# document and on every shadow root (Bokeh's views live in them) notes the nodes that bring a watched text; the next
# animation frame in which such a node is rendered (checkVisibility) is when the text showed. Times are ms since the
# epoch (performance.timeOrigin + now), the clock of the server's trace lines (time.time()).
_PAGE_CLOCK = """
window.__dsEnter = null;
window.__dsSeen = {};
window.__dsTrace = [];
window.__dsTexts = [];
const __dsNow = () => performance.timeOrigin + performance.now();
document.addEventListener('keydown', e => {
  if (e.key === 'Enter') { window.__dsEnter = performance.timeOrigin + e.timeStamp; window.__dsTrace.push([window.__dsEnter, 'browser: Enter down', 0]); }
}, true);
let __dsPending = [], __dsFrame = false;
const __dsCheck = () => {
  __dsFrame = false;
  const now = __dsNow();
  __dsPending = __dsPending.filter(([text, el]) => {
    if (text in window.__dsSeen || !el.isConnected) return false;
    if (!el.checkVisibility()) return true;
    window.__dsSeen[text] = now;
    return false;
  });
  if (__dsPending.length) __dsSchedule();
};
const __dsSchedule = () => { if (!__dsFrame) { __dsFrame = true; requestAnimationFrame(__dsCheck); } };
const __dsObserver = new MutationObserver(records => {
  for (const record of records) {
    const nodes = record.type === 'characterData' ? [record.target] : record.addedNodes;
    for (const node of nodes) {
      const text = node.textContent || '';
      const el = node.nodeType === 1 ? node : node.parentElement;
      for (const t of window.__dsTexts) if (el && !(t in window.__dsSeen) && text.includes(t)) { __dsPending.push([t, el]); __dsSchedule(); }
    }
  }
});
const __dsOptions = {childList: true, subtree: true, characterData: true};
__dsObserver.observe(document, __dsOptions);
const __dsAttach = Element.prototype.attachShadow;
Element.prototype.attachShadow = function (init) { const root = __dsAttach.call(this, init); __dsObserver.observe(root, __dsOptions); return root; };
window.__dsWatch = texts => { window.__dsSeen = {}; __dsPending = []; window.__dsTexts = texts; };
"""
# With --trace: when each websocket message left or arrived, and the page's long tasks.
_BROWSER_TRACE = """
const _WS = window.WebSocket;
window.WebSocket = function (...args) {
  const ws = new _WS(...args);
  ws.addEventListener('message', e => window.__dsTrace.push([__dsNow(), 'browser: websocket in', (e.data.length || e.data.byteLength || e.data.size || 0)]));
  const send = ws.send.bind(ws);
  ws.send = data => { window.__dsTrace.push([__dsNow(), 'browser: websocket out', (data.length || data.byteLength || 0)]); return send(data); };
  return ws;
};
window.WebSocket.prototype = _WS.prototype;
Object.assign(window.WebSocket, {CONNECTING: 0, OPEN: 1, CLOSING: 2, CLOSED: 3});
try {
  new PerformanceObserver(list => { for (const e of list.getEntries())
    window.__dsTrace.push([performance.timeOrigin + e.startTime, 'browser: long task ' + Math.round(e.duration) + ' ms', 0]); })
    .observe({type: 'longtask', buffered: true});
} catch (e) {}
"""


def _hops(trace_file: Path, browser_marks: list[Any], start: float, end: float, shown: dict[str, float]) -> list[tuple[float, str]]:
    """One turn's hops in ms after Enter went down in the page: the server's trace lines, the page's marks, and when
    the watched texts were rendered (``shown``, epoch seconds)."""
    rows = []
    for line in trace_file.read_text().splitlines():
        item = json.loads(line)
        if start - 0.05 <= item["t"] <= end:
            extra = {k: v for k, v in item.items() if k not in ("t", "hop", "thread")}
            rows.append(((item["t"] - start) * 1000, item["hop"] + (f" {extra}" if extra else "")))
    rows += [((t / 1000 - start) * 1000, f"{hop} ({size} B)" if size else hop) for t, hop, size in browser_marks
             if start - 0.05 <= t / 1000 <= end and hop != "browser: Enter down"]
    rows += [((t - start) * 1000, f"browser: {what} rendered") for what, t in shown.items()]
    return sorted(rows)


def browser(turns: int, trace: bool = False, tree: str | None = None) -> dict[str, Any]:
    """Enter-to-first-step and per-step cost measured in Chromium on the Chat page (see the module doc).

    ``tree``: run the server from this source tree (e.g. ``git archive`` of an older commit) instead of the installed
    dsagent, to compare two versions in the same run."""
    import socket
    import subprocess
    import urllib.request

    from playwright.sync_api import sync_playwright

    from dsagent.artifacts.store import Store
    from dsagent.graphs.chat import create_chat
    from dsagent.settings import Settings
    from dsagent.testing.llm_server import LLMServer

    home = Path(tempfile.mkdtemp(prefix="dsagent-bench-chat-page-")) / "ws"
    data = home.parent / "t.csv"
    data.write_text("a,b\n1,2\n3,4\n")
    with Store.open(settings=Settings(home=str(home))) as store:
        chat_id = create_chat(store, "bench", [data], backend="local").id
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    asked, first, whole, steps, cpu = [], [], [], [], []
    with LLMServer([]) as llm:
        env = {**os.environ, "DSAGENT_HOME": str(home), "OPENAI_BASE_URL": llm.base_url, "OPENAI_API_KEY": "bench-key",
               "DSAGENT_LLM_MODEL": "scripted-model", "DSAGENT_AGENT_BACKEND": "local", "DSAGENT_KERNEL_POOL_SIZE": "0"}
        if tree:
            env["PYTHONPATH"] = os.pathsep.join(p for p in (str(Path(tree).resolve()), env.get("PYTHONPATH")) if p)
        log = open(home.parent / "serve.log", "wb")
        trace_file = home.parent / "trace.jsonl"
        entry = [str(Path(__file__).with_name("chat_trace.py")), str(trace_file)] if trace else ["-m", "dsagent"]
        server = subprocess.Popen([sys.executable, *entry, "serve", "--workspace", str(home), "--port", str(port), "--no-demo"],
                                  env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            url = f"http://127.0.0.1:{port}/"
            for _ in range(600):
                try:
                    urllib.request.urlopen(url + "api/runs?limit=1", timeout=5).close()
                    break
                except OSError:
                    time.sleep(0.1)
            with sync_playwright() as playwright:
                chromium = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=["--headless", "--no-sandbox"])
                page = chromium.new_page(viewport={"width": 1280, "height": 900})
                page.add_init_script(_PAGE_CLOCK + (_BROWSER_TRACE if trace else ""))
                page.set_default_timeout(120_000)
                page.goto(f"{url}chat?id={chat_id}")
                page.get_by_text("kernel: open in this server").wait_for()
                box = page.locator("textarea[placeholder^='Ask about the data']")
                for i in range(turns + 1):  # turn 0 is the warm-up
                    llm.add(*turn_script(i))
                    box.fill(f"bench question {i}.")
                    texts = [f"bench question {i}.", f"Plan {i}: count", f"Done {i}."]
                    page.evaluate("texts => { window.__dsTrace = []; window.__dsWatch(texts); }", texts)
                    used = _cpu_seconds(server.pid)
                    box.press("Enter")
                    page.wait_for_function("n => Object.keys(window.__dsSeen).length === n", arg=len(texts))
                    enter, seen = page.evaluate("[window.__dsEnter, window.__dsSeen]")
                    shown, plan, done = ((seen[t] - enter) / 1000 for t in texts)
                    if trace:
                        marks = page.evaluate("window.__dsTrace")
                        rows = _hops(trace_file, marks, enter / 1000, (enter / 1000) + plan + 0.02,
                                     {"question": enter / 1000 + shown, "plan": enter / 1000 + plan})
                        print(f"-- browser turn {i}, hops in ms after Enter went down in the page:", file=sys.stderr)
                        for at, hop in rows:
                            print(f"{at:8.1f}  {hop}", file=sys.stderr)
                    page.get_by_text("Reviewer: accept").nth(i).wait_for()
                    # the turn's end line: its run has finished, as a user reading the answer would find it (a question
                    # sent before waits in host.start for the turn to finish recording, which is not the page's cost)
                    page.get_by_role("button", name="Save turn as notebook").nth(i).wait_for()
                    time.sleep(READING_SECONDS)
                    if i:
                        asked.append(shown * 1000)
                        first.append(plan * 1000)
                        whole.append(done * 1000)
                        cpu.append((_cpu_seconds(server.pid) - used) * 1000)
                    print(f"browser turn {i}{' (' + tree + ')' if tree else ''}: question {shown * 1000:.0f} ms, first step "
                          f"{plan * 1000:.0f} ms, answer {done * 1000:.0f} ms", file=sys.stderr)
                chromium.close()
            with Store.open(settings=Settings(home=str(home))) as store:
                for run in store.list_runs(parent_id=chat_id, kind="agent", limit=100).items:
                    steps.append(sum(1 for e in store.events(run.id) if e.type.startswith("agent_")))
        finally:
            server.send_signal(2)
            server.wait(30)
    return {"browser_question_ms": round(statistics.median(asked), 1), "browser_first_step_ms": round(statistics.median(first), 1),
            "browser_answer_ms": round(statistics.median(whole), 1), "server_cpu_ms_per_turn": round(statistics.median(cpu), 1),
            "agent_steps_per_turn": statistics.median(steps),
            "turn_samples": {"first_step_ms": [round(x) for x in first], "answer_ms": [round(x) for x in whole]}}


def _cpu_seconds(pid: int) -> float:
    """User + system CPU of the server process and its children so far (the kernels too)."""
    import psutil

    process = psutil.Process(pid)
    total = sum(process.cpu_times()[:2])
    for child in process.children(recursive=True):
        try:
            total += sum(child.cpu_times()[:2])
        except psutil.Error:
            pass
    return total


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=6)
    parser.add_argument("--quick", action="store_true", help="2 rounds")
    parser.add_argument("--no-browser", action="store_true", help="only the library's figures")
    parser.add_argument("--no-library", action="store_true", help="only the browser's figures")
    parser.add_argument("--trace", action="store_true", help="print each browser turn's hops (server, page, browser) with "
                                                             "timestamps to stderr (bench/chat_trace.py)")
    parser.add_argument("--compare", metavar="TREE", help="also run the browser part against the dsagent in this source tree "
                                                          "(e.g. `git archive main | tar -x -C /tmp/old`), alternating with this one")
    parser.add_argument("--pairs", type=int, default=2, help="with --compare: how many times each side runs, alternating")
    args = parser.parse_args()
    rounds = 2 if args.quick else args.turns
    result = {"benchmark": "chat"} if args.no_library else asyncio.run(main(rounds))
    if not args.no_browser and not args.compare:
        result.update(browser(rounds, trace=args.trace))
    if not args.no_browser and args.compare:
        sides: dict[str, list[dict[str, Any]]] = {"this": [], "compared": []}
        for _ in range(args.pairs):
            sides["this"].append(browser(rounds, trace=args.trace))
            sides["compared"].append(browser(rounds, tree=args.compare))
        for side, runs in sides.items():
            merged = {key: [x for run in runs for x in run["turn_samples"][key]] for key in ("first_step_ms", "answer_ms")}
            figures = {"browser_question_ms": round(statistics.median(r["browser_question_ms"] for r in runs), 1),
                       "browser_first_step_ms": round(statistics.median(merged["first_step_ms"]), 1),
                       "browser_answer_ms": round(statistics.median(merged["answer_ms"]), 1),
                       "server_cpu_ms_per_turn": round(statistics.median(r["server_cpu_ms_per_turn"] for r in runs), 1),
                       "agent_steps_per_turn": statistics.median(r["agent_steps_per_turn"] for r in runs)}
            if side == "this":
                result.update(figures)
            else:
                result["compared_tree"] = {"tree": args.compare, **figures}
    if not args.no_browser:
        result["target_first_step_ms_in_browser"] = TARGET_FIRST_STEP_MS
    if not args.no_browser and not args.no_library:
        cost = lambda answer_ms: round((answer_ms - result["chat_turn_ms"]) / result["agent_steps_per_turn"], 1)  # noqa: E731
        result["dashboard_cost_ms_per_step"] = cost(result["browser_answer_ms"])
        if "compared_tree" in result:
            result["compared_tree"]["dashboard_cost_ms_per_step"] = cost(result["compared_tree"]["browser_answer_ms"])
        result["target_dashboard_cost_ms_per_step"] = TARGET_COST_PER_STEP_MS
        result["browser_method"] = ("Chromium on the Chat page of a chat opened at page load; from Enter going down in the page "
                                    "to the question, the plan's text and the answer rendered (checked in the page on every "
                                    "animation frame); the next question once the turn's end line shows; the per-step cost is "
                                    "(browser answer - library chat turn) / agent_* events per turn")
    result.pop("turn_samples", None)
    print(json.dumps(result, indent=2))
