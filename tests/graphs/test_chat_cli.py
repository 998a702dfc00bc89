"""`dsagent chat` in a terminal, a crash (kill -9 of the CLI and its kernel), and the chat restored."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from dsagent.artifacts.store import Store
from dsagent.cli import main
from dsagent.graphs.chat import Chat
from dsagent.settings import Settings
from dsagent.testing.llm_server import LLMServer, Reply, ToolCall

ACCEPT = Reply('{"verdict": "accept", "findings": []}', role="reviewer")
LOAD = "df = load_table(data)\ntotal = 40 + 2\nprint('rows:', len(df))"


def cli_env(llm: LLMServer, home) -> dict[str, str]:
    return {**os.environ, "OPENAI_BASE_URL": llm.base_url, "OPENAI_API_KEY": "sk-test-0123456789", "DSAGENT_HOME": str(home),
            "DSAGENT_AGENT_BACKEND": "local", "DSAGENT_LLM_TIMEOUT": "60", "PYTHONUNBUFFERED": "1"}


def turn_finished(settings: Settings) -> bool:
    with Store.open(settings=settings) as store:
        chats = store.chats.list().items
        return bool(chats) and any(e.type == "chat_turn_finished" for e in store.events(chats[0].id))


async def test_repl_turn_then_kill_9_then_the_chat_is_restored_and_goes_on(tmp_path, workspace_home, monkeypatch, capsys):
    csv = tmp_path / "t.csv"
    csv.write_text("a,y\n1,2\n2,4\n3,5\n")
    settings = Settings()
    first = [Reply("1. load"), Reply(tool_calls=[ToolCall("run_code", {"code": LOAD})]), Reply("The table has 3 rows."), ACCEPT]
    with LLMServer(first) as llm:
        process = subprocess.Popen([sys.executable, "-m", "dsagent", "chat", "crashy", "--data", str(csv)], env=cli_env(llm, workspace_home),
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   start_new_session=True)
        try:
            process.stdin.write("How many rows?\n")
            process.stdin.flush()  # stdin stays open: the REPL waits for the next question
            deadline = time.monotonic() + 120
            while not turn_finished(settings):
                assert process.poll() is None, process.communicate()
                assert time.monotonic() < deadline, "the turn did not finish"
                time.sleep(0.2)
        finally:
            os.killpg(process.pid, signal.SIGKILL)  # the CLI and its kernel, as a crash would
            out, _ = process.communicate()
    assert "new chat 'crashy'" in out and "· plan:" in out and "· run_code [ok" in out and "The table has 3 rows." in out

    with Store.open(settings=settings) as store:
        record = store.chats.get("crashy")
        # killed between turns: the chat was idle and stays so; its dead holder does not keep it from opening
        assert (record.status, record.owner_pid, store.chats.holder(record.id)) == ("idle", process.pid, None)
    second = [Reply("1. use total"), Reply(tool_calls=[ToolCall("run_code", {"code": "print('total', total, 'rows', len(df))"})]),
              Reply("total is 42 and df has 3 rows."), ACCEPT]
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-0123456789")
    with LLMServer(second) as llm:
        steps = []
        async with await Chat.open("crashy", settings=settings.replace(llm_base_url=llm.base_url, agent_backend="local"),
                                   on_step=lambda kind, payload: steps.append((kind, payload))) as chat:
            outcome = await chat.ask("What is total, and how many rows has df?")
        told = [m["content"] for m in llm.requests[2].messages if m["role"] == "tool"][-1]
    assert outcome.run.status == "succeeded", outcome.run.error
    assert "total 42 rows 3" in told  # the state of the killed kernel, rebuilt by replay
    restored = dict(steps)["restore"]
    assert restored["turns"] == 1 and restored["replayed_cells"] == 3 and restored["failed"] == []  # params, profile, LOAD

    # the terminal again: no new question, just the turns and an export; EOF leaves
    done = subprocess.run([sys.executable, "-m", "dsagent", "chat", "crashy"], input="/turns\n/export\n", env=cli_env(llm, workspace_home),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "2 earlier turn(s)" in done.stdout and "1. [succeeded" in done.stdout and "2. [succeeded" in done.stdout
    assert "notebook: " in done.stdout and "chat-" in done.stdout

    assert main(["chats", "rename", "crashy", "kept"]) == 0
    assert main(["chats", "ls", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [(c["name"], c["turns"], c["status"]) for c in listed["items"]] == [("kept", 2, "idle")]
    assert main(["chats", "rm", "kept", "--purge"]) == 0
    with Store.open(settings=settings) as store:
        assert store.list_runs(parent_id=record.id).items == [] and store.chats.list().items == []
