"""A conversation on every backend the conformance kit covers: local, sandbox, a real Kernel Gateway on
loopback (`jupyter`), and E2B through the SDK's debug mode against the loopback server.

One test per backend: two turns sharing the kernel, a turn stopped mid-cell, the chat closed (its kernel
gone), opened again (a new kernel, the cells replayed) and a turn that uses turn 1's variable."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "kernel_gateway"))  # the shared server fixtures

from remote_servers import RunningServer, kernel_gateway  # noqa: E402,F401 (fixture)

from dsagent.artifacts.store import Store  # noqa: E402
from dsagent.graphs.chat import Chat, create_chat  # noqa: E402
from dsagent.settings import Settings  # noqa: E402
from dsagent.testing.llm_server import LLMServer, Reply, ToolCall  # noqa: E402

pytest_plugins = ["e2b_fixtures"]

ACCEPT = Reply('{"verdict": "accept", "findings": []}', role="reviewer")


def turn(code: str, answer: str) -> list[Reply]:
    return [Reply("1. do it"), Reply(tool_calls=[ToolCall("run_code", {"code": code})]), Reply(answer), ACCEPT]


# the servers are reached through getfixturevalue, which conftest's grouping cannot see: the params say it
@pytest.fixture(params=["local", "sandbox", pytest.param("jupyter", marks=pytest.mark.xdist_group("jupyter-servers")),
                        pytest.param("e2b", marks=pytest.mark.xdist_group("e2b"))])
def backend_name(request, monkeypatch) -> str:
    """The backend's name, with the environment that points it at its server (as a user would set it)."""
    if request.param == "jupyter":
        server: RunningServer = request.getfixturevalue("kernel_gateway")
        monkeypatch.setenv("DSAGENT_JUPYTER_URL", server.url)
        monkeypatch.setenv("DSAGENT_JUPYTER_TOKEN", server.token)
    if request.param == "e2b":
        request.getfixturevalue("e2b_debug")
    return request.param


async def test_a_conversation_survives_stop_and_reopen(backend_name, tmp_path, workspace_home, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-0123456789")
    csv = tmp_path / "points.csv"
    csv.write_text("x,y\n1,2\n2,4\n3,5\n4,9\n")
    script = [
        *turn("df = load_table(data)\nprint('rows', len(df))", "4 rows."),
        *turn("print('sum y', df['y'].sum())", "The sum is 20."),
        Reply("1. wait"), Reply(tool_calls=[ToolCall("run_code", {"code": "import time\ntime.sleep(30)"})]),
        *turn("print('max y', df['y'].max(), 'on', len(df), 'rows')", "The max is 9."),
    ]
    with LLMServer(script) as llm:
        settings = Settings(llm_base_url=llm.base_url, llm_model="scripted-model", llm_timeout=30.0, kernel_pool_size=0,
                            agent_cell_timeout=60.0)
        with Store.open(settings=settings) as store:
            record = create_chat(store, f"on {backend_name}", [csv], backend=backend_name)
            async with await Chat.open(record.id, settings=settings, store=store) as chat:
                assert chat.kernels.name == backend_name
                assert (await chat.ask("How many rows?")).run.status == "succeeded"
                second = await chat.ask("Sum of y?")
                started = await chat.start("Wait")
                while not any(e.type == "cell_started" and "sleep" in e.payload["code"]
                              for e in await asyncio.to_thread(store.events, started.run_id)):
                    await asyncio.sleep(0.1)
                stopped = await chat.stop()
            # closed: that kernel is gone; a new one gets the cells again
            async with await Chat.open(record.id, settings=settings, store=store) as chat:
                fourth = await chat.ask("Max of y?")
            turns = [t.status for t in load(store, record.id)]
        llm.assert_consumed()
        told = [[m["content"] for m in r.messages if m["role"] == "tool"][-1:] for r in llm.requests]
    assert second.run.status == "succeeded" and "sum y 20" in told[6][0]
    assert stopped is not None and stopped.run.status == "cancelled"
    assert fourth.run.status == "succeeded", fourth.run.error
    assert "max y 9 on 4 rows" in told[12][0]
    assert turns == ["succeeded", "succeeded", "cancelled", "succeeded"]
    assert {r.backend for r in (second.run, fourth.run)} == {backend_name}


def load(store: Store, chat_id: int):
    from dsagent.graphs.chat_history import load_turns

    return load_turns(store, chat_id)
