"""kill -9 in the middle of an agent run, then `dsagent resume`: state rebuilt, nothing run twice."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from dsagent.artifacts.store import Store
from dsagent.settings import Settings
from dsagent.testing.llm_server import LLMServer, Reply, ToolCall

APPEND = "with open('log.txt', 'a') as f:\n    f.write('x\\n')\ntotal = 40 + 2\nprint('lines:', open('log.txt').read().count('x'))"
ACCEPT = Reply('{"verdict": "accept", "findings": []}', role="reviewer")


def cli_env(llm: LLMServer, home) -> dict[str, str]:
    return {**os.environ, "OPENAI_BASE_URL": llm.base_url, "OPENAI_API_KEY": "sk-test-0123456789", "DSAGENT_HOME": str(home),
            "DSAGENT_AGENT_BACKEND": "local", "DSAGENT_LLM_TIMEOUT": "120"}


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def slow_cell_started(home) -> bool:
    with Store.open(settings=Settings(home=str(home))) as store:
        runs = store.list_runs(limit=1).items
        return bool(runs) and any(e.type == "cell_started" and "slow" in e.payload["code"] for e in store.events(runs[0].id))


@pytest.mark.parametrize("when", ["between_steps", "mid_tool_calls"])
def test_kill_9_mid_run_then_resume_restores_state_and_repeats_no_cell(tmp_path, workspace_home, when):
    """between_steps: killed while waiting for the model (the last checkpoint has the cell);
    mid_tool_calls: killed in the second of two tool calls (the checkpoint predates both; the
    first one's result comes from the store's journal)."""
    csv = tmp_path / "t.csv"
    csv.write_text("a\n1\n2\n")
    calls = [ToolCall("run_code", {"code": APPEND})]
    if when == "mid_tool_calls":
        calls.append(ToolCall("run_code", {"code": "import time\ntime.sleep(4)\nprint('slow done')"}))
    first = [
        Reply("1. append to the log"),
        Reply(tool_calls=calls),
        Reply("never sent: the process is killed while it waits", delay=60),
    ]
    with LLMServer(first) as llm:
        process = subprocess.Popen([sys.executable, "-m", "dsagent", "ask", "Append to the log", "--data", str(csv)],
                                   env=cli_env(llm, workspace_home), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   start_new_session=True)
        try:
            if when == "between_steps":
                wait_for(lambda: len(llm.requests) >= 3 or process.poll() is not None, 120, "the third model request")
            else:
                wait_for(lambda: process.poll() is not None or slow_cell_started(workspace_home), 120, "the slow cell")
            assert process.poll() is None, process.communicate()
        finally:
            os.killpg(process.pid, signal.SIGKILL)  # the CLI and its kernel, as a crash would
            process.wait()

    settings = Settings()
    with Store.open(settings=settings) as store:  # opening marks the dead owner's run failed
        run = store.list_runs(limit=1).items[0]
        assert run.status == "failed" and "ended without finishing it" in (run.error or "")

    second = [
        Reply(tool_calls=[ToolCall("run_code", {"code": "print('total is', total, '; lines:', open('log.txt').read().count('x'))"})]),
        Reply("The log has 1 line and total is 42."),
        ACCEPT,
    ]
    with LLMServer(second) as llm:
        done = subprocess.run([sys.executable, "-m", "dsagent", "resume", str(run.id), "--json"], env=cli_env(llm, workspace_home),
                              capture_output=True, text=True, timeout=180)
        told = [m["content"] for m in llm.requests[1].messages if m["role"] == "tool"]
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["status"] == "succeeded" and result["run_id"] == run.id
    assert "total is 42 ; lines: 1" in told[-1]  # kernel state rebuilt by replay; the append ran once in this kernel
    assert "· resumed:" in done.stderr
    with Store.open(settings=settings) as store:
        events = store.events(run.id)
    appended = [e for e in events if e.type == "cell_started" and "open('log.txt', 'a')" in e.payload["code"]]
    assert len(appended) == 1  # recorded once: the resumed graph took the first run's result
    assert [e.payload["status"] for e in events if e.type == "status"][-2:] == ["running", "succeeded"]
    resume = next(e for e in events if e.type == "agent_resume")
    assert resume.payload["replayed_cells"] >= 3  # parameters, profile, the append
    append_cell = appended[0].payload["cell"]
    if when == "mid_tool_calls":
        assert resume.payload["journaled_after_checkpoint"] == [append_cell]
    else:
        # checkpoints are written with durability="async": the kill may land before the last step's
        # checkpoint is on disk, and then the journal supplies that cell; either way it ran once (above)
        assert resume.payload["journaled_after_checkpoint"] in ([], [append_cell])


def test_resume_refuses_what_it_cannot_continue(workspace_home):
    env = {**os.environ, "DSAGENT_HOME": str(workspace_home), "OPENAI_API_KEY": "k"}
    done = subprocess.run([sys.executable, "-m", "dsagent", "resume", "99"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "no run with id 99" in done.stderr
    with Store.open(settings=Settings()) as store:
        run = store.create_run("exec", title="x")
        store.update_run_status(run.id, "succeeded")
    done = subprocess.run([sys.executable, "-m", "dsagent", "resume", str(run.id)], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "not an agent run" in done.stderr
