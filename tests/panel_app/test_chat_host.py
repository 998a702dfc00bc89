"""The dashboard's ChatHost: chats run on its own loop, an idle chat's kernel is shut down with an event saying
why, and the next question reopens it by replay; shutdown leaves no kernel. Real local kernels, a real store."""

from __future__ import annotations

import time

import psutil
import pytest

from dsagent.artifacts.store import Store
from dsagent.graphs.chat import create_chat
from dsagent.panel_app.chat_host import ChatHost
from dsagent.settings import Settings
from dsagent.testing.llm_server import LLMServer, Reply, ToolCall

ACCEPT = Reply('{"verdict": "accept", "findings": []}', role="reviewer")


def _running(pid: int) -> bool:
    deadline = time.monotonic() + 10  # the fork template reaps its children a moment after the shutdown
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    return _alive(pid)


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _wait_done(store: Store, run_id: int) -> None:
    deadline = time.monotonic() + 60
    while not store.get_run(run_id).done and time.monotonic() < deadline:
        time.sleep(0.05)
    assert store.get_run(run_id).done


def test_an_idle_chat_is_closed_with_a_reason_and_reopens_by_replay(workspace_home, monkeypatch, tmp_path):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-0123456789")
    data = tmp_path / "t.csv"
    data.write_text("a,b\n1,2\n3,4\n")
    script = [Reply("1. set"), Reply(tool_calls=[ToolCall("run_code", {"code": "kept = 41"})]), Reply("set."), ACCEPT,
              Reply("1. use"), Reply(tool_calls=[ToolCall("run_code", {"code": "print('kept is', kept + 1)"})]), Reply("42."), ACCEPT]
    with LLMServer(script) as llm:
        settings = Settings(llm_model="scripted-model", llm_base_url=llm.base_url, agent_backend="local", kernel_pool_size=0,
                            dashboard_idle_timeout=3.0, agent_cell_timeout=60.0)
        with Store.open(settings=settings) as store:
            record = create_chat(store, "idle", [data], backend="local")
        host = ChatHost(settings)
        try:
            host.attach(record.id, "session-1")
            run_id = host.submit(host.start(record.id, "set kept", user="ann")).result(60)
            kernel = host._chats[record.id].session.kernel_pid  # the turn is running: the chat is open
            _wait_done(host.store, run_id)
            assert host.store.get_run(run_id).status == "succeeded"
            assert kernel is not None and psutil.pid_exists(kernel)
            host.detach(record.id, "session-1")  # the browser went away
            deadline = time.monotonic() + 30
            while host.is_open(record.id) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert not host.is_open(record.id)
            assert not _running(kernel), "the idle chat's kernel was shut down"
            deadline = time.monotonic() + 10  # written once the kernel is down
            while not (closed := [e.payload for e in host.store.events(record.id) if e.type == "chat_closed"]) \
                    and time.monotonic() < deadline:
                time.sleep(0.1)
            assert closed and "idle for" in closed[0]["reason"] and "dashboard_idle_timeout" in closed[0]["reason"]
            closed_run = host.store.get_run(record.id)
            assert (closed_run.status, closed_run.owner_pid) == ("idle", None)  # held by nobody: free for `dsagent chat` or another page
            launched = [e.payload for e in host.store.events(run_id) if e.type == "launched"]
            assert launched[0]["user"] == "ann" and launched[0]["via"] == "dashboard"
            # the next question opens it again: the replay brings `kept` back
            second = host.submit(host.start(record.id, "use kept", user="ann")).result(60)
            kernel = host._chats[record.id].session.kernel_pid
            _wait_done(host.store, second)
            cells = [e.payload for e in host.store.events(second) if e.type == "agent_cell" and e.payload["role"] != "setup"]
            assert "kept is 42" in cells[0]["outputs"][0]["text"]
        finally:
            host.shutdown()
        assert not _running(kernel), "shutdown leaves no kernel"
        llm.assert_consumed()


def test_two_chats_run_at_once_and_neither_waits_for_the_other(workspace_home, monkeypatch, tmp_path):
    """Two browser tabs, two chats: a turn whose cell is still running does not hold up another chat's turn."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-0123456789")
    data = tmp_path / "t.csv"
    data.write_text("a,b\n1,2\n3,4\n")
    go = tmp_path / "go"
    slow_cell = f"import os, time\nwhile not os.path.exists({str(go)!r}):\n    time.sleep(0.05)\nprint('slow done')"
    # one script in request order: the slow chat's plan and cell, the quick chat's whole turn, the slow chat's end
    script = [Reply("1. wait"), Reply(tool_calls=[ToolCall("run_code", {"code": slow_cell})]),
              Reply("1. add"), Reply(tool_calls=[ToolCall("run_code", {"code": "print('quick', 1 + 1)"})]), Reply("2."), ACCEPT,
              Reply("waited."), ACCEPT]
    with LLMServer(script) as llm:
        settings = Settings(llm_model="scripted-model", llm_base_url=llm.base_url, agent_backend="local", kernel_pool_size=0,
                            agent_cell_timeout=60.0)
        with Store.open(settings=settings) as store:
            slow, quick = create_chat(store, "slow", [data], backend="local"), create_chat(store, "quick", [data], backend="local")
        host = ChatHost(settings)
        try:
            host.attach(slow.id, "tab-1")
            host.attach(quick.id, "tab-2")
            slow_run = host.submit(host.start(slow.id, "wait for the file", user="ann")).result(60)
            deadline = time.monotonic() + 60
            while len(llm.requests) < 2 and time.monotonic() < deadline:  # its cell is running (and waits for `go`)
                time.sleep(0.05)
            quick_run = host.submit(host.start(quick.id, "add", user="bob")).result(60)
            _wait_done(host.store, quick_run)
            assert host.store.get_run(quick_run).status == "succeeded"
            assert host.store.get_run(slow_run).status == "running"  # still in its cell: the quick turn did not wait for it
            go.touch()
            _wait_done(host.store, slow_run)
            assert host.store.get_run(slow_run).status == "succeeded"
            cells = [e.payload for e in host.store.events(slow_run) if e.type == "agent_cell" and e.payload["role"] != "setup"]
            assert "slow done" in cells[0]["outputs"][0]["text"]
        finally:
            host.shutdown()
        llm.assert_consumed()
