"""Conversations on the local backend: scripted LLM over loopback HTTP, real kernels, a real store."""

from __future__ import annotations

import asyncio
import os
from datetime import timedelta

import nbformat
import pytest

from dsagent.artifacts.store import Store
from dsagent.errors import AgentError, ChatError
from dsagent.graphs.chat import Chat, create_chat, delete_chat, follow_events, list_chats, rename_chat
from dsagent.graphs.chat_export import export_chat
from dsagent.graphs.chat_history import TurnRecord, render_history
from dsagent.runs.notebook_run import run_notebook
from dsagent.settings import Settings
from dsagent.testing.llm_server import LLMServer, Reply, ToolCall

ACCEPT = Reply('{"verdict": "accept", "findings": []}', role="reviewer")
LOAD = "df = load_table(data)\nprint('rows:', len(df), 'mean y:', df['y'].mean())"
USE = "print('sum y:', df['y'].sum())"  # turn 2: `df` is still in the kernel
TICKING = "x = 41\nimport time\nfor i in range(600):\n    print('tick', i)\n    time.sleep(0.2)\nx = 0"  # prints 5 lines a second


@pytest.fixture
def csv(tmp_path):
    path = tmp_path / "points.csv"
    path.write_text("x,y\n1,2\n2,4\n3,5\n4,9\n")
    return path


@pytest.fixture
def settings(workspace_home, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-0123456789")
    return Settings(llm_model="scripted-model", llm_backoff_initial=0.01, llm_backoff_max=0.05, llm_timeout=20.0,
                    agent_backend="local", agent_cell_timeout=60.0, kernel_pool_size=0)


@pytest.fixture
def store(settings):
    with Store.open(settings=settings) as store:
        yield store


def two_turns() -> list[Reply]:
    return [
        Reply("1. load the table"), Reply(tool_calls=[ToolCall("run_code", {"code": LOAD})]),
        Reply("There are 4 rows; the mean of y is 5.0."), ACCEPT,
        Reply("1. sum y of the loaded table"), Reply(tool_calls=[ToolCall("run_code", {"code": USE})]),
        Reply("The sum of y is 20."), ACCEPT,
    ]


async def test_two_turns_share_kernel_and_history_then_the_chat_exports_and_reruns(csv, settings, store, tmp_path):
    record = create_chat(store, "points", [csv])
    with LLMServer(two_turns()) as llm:
        settings = settings.replace(llm_base_url=llm.base_url)
        async with await Chat.open("points", settings=settings, store=store) as chat:
            opened = await asyncio.to_thread(store.get_run, record.id)
            assert (opened.status, opened.owner_pid) == ("idle", os.getpid())  # open: held by this process, no turn yet
            first = await chat.ask("How many rows, and the mean of y?")
            turn = await chat.start("And the sum of y?")
            followed = [e async for e in follow_events(store, turn.run_id, poll=0.05)]  # what a page shows, live
            second = await turn.wait()
            with pytest.raises(ChatError, match="already open"):
                await Chat.open(record.id, settings=settings, store=store)
        llm.assert_consumed()
        follow_up_prompt = llm.requests[4].messages[-1]["content"]
        told = [m["content"] for m in llm.requests[6].messages if m["role"] == "tool"][-1]
    assert first.run.status == "succeeded" and second.run.status == "succeeded", (first.run.error, second.run.error)
    assert first.run.parent_id == record.id == second.run.parent_id
    assert "sum y: 20" in told  # `df` from turn 1, not reloaded
    assert "Turn 1 (succeeded): How many rows" in follow_up_prompt and "df = load_table(data)" in follow_up_prompt
    assert "mean y: 5.0" in follow_up_prompt and "4 rows x 2 columns" in follow_up_prompt  # trimmed output + the profile
    types = [e.type + (":" + e.payload["role"] if e.type == "agent_cell" else "") for e in followed]
    assert types.index("agent_plan") < types.index("agent_cell:analyst") < types.index("agent_answer") < types.index("agent_review")
    assert followed[-1].type == "status" and followed[-1].payload["status"] == "succeeded"
    roles = [e.payload.get("role") for e in store.events(second.run.id) if e.type == "agent_cell"]
    assert roles == ["setup", "analyst"]  # the follow-up ran its parameters cell, no second profile
    chat_events = [e.type for e in store.events(record.id)]
    assert chat_events.count("chat_turn_started") == 2 and chat_events.count("chat_turn_finished") == 2
    closed = store.chats.get("points")
    assert (closed.status, closed.held, closed.turns) == ("idle", False, 2)

    # the whole chat as one notebook: re-runs through the papermill engine on other data
    path = await asyncio.to_thread(export_chat, store, record.id, tmp_path / "chat.ipynb")
    nb = nbformat.read(path, as_version=4)
    assert nb.cells[0].metadata.tags == ["parameters"] and str(csv) in nb.cells[0].source
    assert [c.source.split("\n")[0] for c in nb.cells if c.source.startswith("## Turn")] == [
        "## Turn 1: How many rows, and the mean of y?", "## Turn 2: And the sum of y?"]
    other = tmp_path / "other.csv"
    other.write_text("x,y\n1,10\n2,30\n")
    rerun = await run_notebook(path, {"data": str(other)}, backend="local", settings=settings, output_path=tmp_path / "rerun.ipynb")
    assert rerun.status == "succeeded", rerun.error
    texts = "".join(o.get("text", "") for c in nbformat.read(tmp_path / "rerun.ipynb", as_version=4).cells
                    if c.cell_type == "code" for o in c.get("outputs", []))
    assert "rows: 2 mean y: 20.0" in texts and "sum y: 40" in texts


async def test_stop_cancels_a_long_cell_and_the_chat_goes_on(csv, settings, store):
    create_chat(store, "long", [csv])
    script = [
        Reply("1. wait"), Reply(tool_calls=[ToolCall("run_code", {"code": TICKING})]),
        Reply("1. print x"), Reply(tool_calls=[ToolCall("run_code", {"code": "print('x is', x + 1)"})]),
        Reply("x is 42."), ACCEPT,
    ]
    with LLMServer(script) as llm:
        settings = settings.replace(llm_base_url=llm.base_url)
        async with await Chat.open("long", settings=settings, store=store) as chat:
            turn = await chat.start("Wait a minute")
            # what the cell prints reaches a follower while it runs, a few lines per event
            printed = ""
            while "tick 3\n" not in printed:
                events = await asyncio.to_thread(store.events, turn.run_id)
                printed = "".join(e.payload["text"] for e in events if e.type == "cell_output")
                await asyncio.sleep(0.1)
            assert printed.startswith("tick 0\ntick 1\ntick 2\ntick 3\n")
            ticking = [e.payload["cell"] for e in events if e.type == "cell_started" and "tick" in e.payload["code"]]
            assert ticking and not [e for e in events if e.type == "cell_finished" and e.payload["cell"] == ticking[0]]  # still running
            assert (await asyncio.to_thread(store.get_run, chat.id)).status == "running"  # the chat runs a turn
            stopped = await chat.stop()
            assert stopped is not None and stopped.run.status == "cancelled"
            with pytest.raises(AgentError, match="the task is empty"):  # refused before any run exists
                await chat.start("  ")
            with pytest.raises(ChatError, match="no cell is waiting"):
                chat.decide("run")
            after = await chat.ask("What is x + 1?")  # the kernel was interrupted, not lost
        told = [m["content"] for m in llm.requests[4].messages if m["role"] == "tool"][-1]
    assert after.run.status == "succeeded" and "x is 42" in told
    kept = [a for a in store.list_artifacts(run_id=turn.run_id).items if a.kind == "notebook"]
    assert kept, "the cancelled turn keeps its partial notebook"
    finished = [e.payload for e in store.events(store.chats.get("long").id) if e.type == "chat_turn_finished"]
    assert [f["status"] for f in finished] == ["cancelled", "succeeded"]
    assert store.get_run(store.chats.get("long").id).status == "idle"  # between turns, whatever the last one did


async def test_approval_run_edit_reject(csv, settings, store):
    create_chat(store, "careful", [csv])
    script = [
        Reply("1. compute"),
        Reply(tool_calls=[ToolCall("run_code", {"code": "value = 1\nprint('value', value)"}),
                          ToolCall("run_code", {"code": "import shutil; shutil.rmtree('.')"})]),
        Reply("The value is 2."), ACCEPT,
    ]
    with LLMServer(script) as llm:
        settings = settings.replace(llm_base_url=llm.base_url)
        async with await Chat.open("careful", settings=settings, store=store) as chat:
            turn = await chat.start("Compute the value", approve=True)
            decisions = iter([("edit", "value = 2\nprint('value', value)", ""), ("reject", None, "do not delete files")])
            seen = []
            while not turn.done:
                if chat.pending is not None and not chat.pending.future.done():
                    seen.append(chat.pending.request["arguments"]["code"])
                    action, code, reason = next(decisions)
                    chat.decide(action, code=code, reason=reason)
                await asyncio.sleep(0.02)
            outcome = await turn.wait()
        told = [m["content"] for m in llm.requests[2].messages if m["role"] == "tool"]
    assert outcome.run.status == "succeeded", outcome.run.error
    assert seen == ["value = 1\nprint('value', value)", "import shutil; shutil.rmtree('.')"]
    assert "the user edited this call" in told[0] and "value 2" in told[0]
    assert "did not allow" in told[1] and "do not delete files" in told[1]
    events = store.events(outcome.run.id)
    cells = [e.payload for e in events if e.type == "agent_cell" and e.payload["role"] == "analyst"]
    assert [c["code"] for c in cells] == ["value = 2\nprint('value', value)"]  # the edited code ran and is recorded
    assert [e.payload["action"] for e in events if e.type == "agent_approval"][-2:] == ["edit", "reject"]
    assert sum(e.type == "agent_approval_pending" for e in events) == 2


def test_crud_names_pages_and_delete(csv, store, settings):
    first = create_chat(store, "a", [csv])
    create_chat(store, "b")
    with pytest.raises(ChatError, match="already a chat named 'a'"):
        create_chat(store, " a ")
    page = list_chats(store, limit=1)
    assert [c.name for c in page.items] == ["b"] and page.next_cursor
    assert [c.name for c in list_chats(store, cursor=page.next_cursor).items] == ["a"]
    renamed = rename_chat(store, "a", "sales q3")
    assert renamed.id == first.id and store.get_run(first.id).title == "sales q3"
    assert renamed.datasets[0]["param"] == "data" and renamed.datasets[0]["source"] == str(csv)
    assert delete_chat(store, "sales q3") == []
    assert store.get_run(first.id).status == "cancelled"  # kept, and gc may collect it later
    assert delete_chat(store, "b", purge=True)
    create_chat(store, "c")
    store.gc(timedelta(0))  # collects the deleted chat's run and rewrites the files: the chats table comes along
    assert [c.name for c in list_chats(store).items] == ["c"]


def test_history_keeps_the_newest_turns_whole_within_the_budget():
    turns = [TurnRecord(n, n, f"task {n}", "analysis", "succeeded", answer=f"answer {n}",
                        cells=[{"cell": 2, "kind": "code", "code": f"step_{n} = {n}", "status": "ok", "role": "analyst",
                                "observation": f"cell 2 ran ok (0.1 s)\noutput:\n{'x' * 300} out {n}"}]) for n in range(1, 6)]
    text = render_history(turns, budget_tokens=120)
    assert "task 5" in text and "out 5" in text  # the newest, whole
    assert "task 4" in text and "step_4 = 4" in text and "out 4" not in text  # older: code and answer, no outputs
    assert "3 earlier turn(s) left out" in text and "task 3" not in text
    assert len(text) < 120 * 4 + 100


async def test_terminal_approver_answers_run_edit_reject():
    from dsagent.cli.chat import _terminal_approver

    class Lines:  # what the REPL's stdin reader hands out
        def __init__(self, *lines):
            self.lines = list(lines)

        async def next(self, prompt=""):
            return self.lines.pop(0) if self.lines else None

    request = {"tool": "run_code", "arguments": {"code": "print(1)"}}
    assert await _terminal_approver(Lines("y"))(request) == {"action": "run"}
    assert await _terminal_approver(Lines("e", "x = 2", "print(x)", "."))(request) == {"action": "edit", "code": "x = 2\nprint(x)"}
    assert await _terminal_approver(Lines("not on my data"))(request) == {"action": "reject", "reason": "not on my data"}
    assert await _terminal_approver(Lines())(request) == {"action": "reject", "reason": "refused"}  # stdin closed
