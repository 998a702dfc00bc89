"""The coding agent (write code and tests, run them, fix until they pass) and the team graph that routes."""

from __future__ import annotations

import nbformat
import pytest

from dsagent.artifacts.store import Store
from dsagent.graphs.runner import execute_agent_run
from dsagent.settings import Settings
from dsagent.testing.llm_server import LLMServer, Reply, ToolCall

BUGGY = "def mean(xs):\n    return sum(xs) / (len(xs) + 1)\n"
FIXED = "def mean(xs):\n    return sum(xs) / len(xs)\n"
TESTS = "from stats import mean\n\n\ndef test_mean():\n    assert mean([1, 2, 3]) == 2\n"
RUN_TESTS = ToolCall("shell", {"command": "python -m pytest -q -p no:cacheprovider test_stats.py"})
ACCEPT = Reply('{"verdict": "accept", "findings": []}', role="reviewer")


@pytest.fixture
def settings(workspace_home, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-0123456789")
    return Settings(llm_model="scripted-model", llm_backoff_initial=0.01, llm_timeout=10.0, agent_backend="local",
                    agent_cell_timeout=60.0)


def coder_script() -> list[Reply]:
    return [
        Reply(tool_calls=[ToolCall("write_file", {"path": "stats.py", "content": BUGGY}),
                          ToolCall("write_file", {"path": "test_stats.py", "content": TESTS}), RUN_TESTS], role="coder"),
        Reply("Wrote stats.py with mean(); done.", role="coder"),  # too early: the tests failed
        Reply(tool_calls=[ToolCall("write_file", {"path": "stats.py", "content": FIXED}), RUN_TESTS], role="coder"),
        Reply("Wrote stats.py and test_stats.py; the test run says 1 passed.", role="coder"),
        ACCEPT,
    ]


async def test_coding_agent_is_sent_back_until_its_tests_pass(settings):
    script = [Reply("1. stats.py with mean\n2. a test\n3. run it", role="coder"), *coder_script()[:2],
              Reply('{"verdict": "accept", "findings": []}', role="reviewer"), *coder_script()[2:]]
    with LLMServer(script) as llm:
        outcome = await execute_agent_run("Write mean() in stats.py with a test", graph="coding",
                                          settings=settings.replace(llm_base_url=llm.base_url))
        llm.assert_consumed()
        revision = next(m["content"] for m in llm.requests_for("coder")[3].messages if m["role"] == "user" and "reviewer" in m["content"])
    assert outcome.run.status == "succeeded", outcome.run.error
    assert "the last test run did not pass" in revision
    assert [r["verdict"] for r in outcome.state["reviews"]] == ["revise", "accept"]
    nb = nbformat.read(outcome.notebook_path, as_version=4)
    sources = [c.source for c in nb.cells if c.cell_type == "code"]
    assert any(s.startswith("%%writefile stats.py") and "len(xs)\n" in s for s in sources)
    files = {a["name"] for c in outcome.state["cells"] if c.get("kind") == "file" for a in c.get("artifacts", [])}
    assert {"stats.py", "test_stats.py"} <= files  # what the coder wrote is kept as file artifacts
    runs = [c for c in outcome.state["cells"] if c.get("kind") == "shell"]
    assert "1 failed" in runs[0]["observation"] and "1 passed" in runs[-1]["observation"]


async def test_team_routes_to_the_coder_and_says_who_does_what(settings):
    script = [Reply('{"route": "coding", "reason": "it asks for code, not an analysis"}', role="planner"),
              Reply("1. stats.py\n2. test", role="coder"), *coder_script()[:2],
              Reply('{"verdict": "accept", "findings": []}', role="reviewer"), *coder_script()[2:]]
    with LLMServer(script) as llm:
        outcome = await execute_agent_run("Write mean() in stats.py with a test", graph="team",
                                          settings=settings.replace(llm_base_url=llm.base_url))
        llm.assert_consumed()
    assert outcome.run.status == "succeeded", outcome.run.error
    with Store.open(settings=settings) as store:
        events = store.events(outcome.run.id)
    delegate = next(e for e in events if e.type == "agent_delegate")
    assert delegate.payload == {"role": "lead", "to": "coder", "route": "coding", "reason": "it asks for code, not an analysis"}
    acting = {e.payload["role"] for e in events if e.type in ("agent_act", "agent_plan", "agent_answer")}
    assert acting == {"coder"}
    assert {e.payload["role"] for e in events if e.type == "agent_review"} == {"reviewer"}


async def test_team_falls_back_to_the_analyst_when_data_is_given_and_the_router_babbles(settings, tmp_path):
    csv = tmp_path / "t.csv"
    csv.write_text("a\n1\n3\n")
    script = [Reply("I think the analyst should do it.", role="planner"),  # no JSON
              Reply("1. mean of a", role="planner"),
              Reply(tool_calls=[ToolCall("run_code", {"code": "print(load_table(data)['a'].mean())"})], role="planner"),
              Reply("The mean of a is 2.0.", role="planner"), ACCEPT]
    with LLMServer(script) as llm:
        outcome = await execute_agent_run("Mean of a", [csv], graph="team", settings=settings.replace(llm_base_url=llm.base_url))
    assert outcome.run.status == "succeeded" and outcome.state["route"] == "analysis"
    with Store.open(settings=settings) as store:
        delegate = next(e for e in store.events(outcome.run.id) if e.type == "agent_delegate")
    assert delegate.payload["to"] == "analyst" and "could not be read" in delegate.payload["reason"]


def test_cli_code_runs_the_coder(workspace_home):
    import json
    import os
    import subprocess
    import sys

    script = [Reply("1. stats.py\n2. test", role="coder"),
              Reply(tool_calls=[ToolCall("write_file", {"path": "stats.py", "content": FIXED}),
                                ToolCall("write_file", {"path": "test_stats.py", "content": TESTS}), RUN_TESTS], role="coder"),
              Reply("Wrote stats.py and test_stats.py; 1 passed.", role="coder"), ACCEPT]
    with LLMServer(script) as llm:
        env = {**os.environ, "OPENAI_BASE_URL": llm.base_url, "OPENAI_API_KEY": "sk-test-0123456789",
               "DSAGENT_HOME": str(workspace_home), "DSAGENT_AGENT_BACKEND": "local"}
        done = subprocess.run([sys.executable, "-m", "dsagent", "code", "Write mean() with a test", "--json"], env=env,
                              capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["status"] == "succeeded" and "1 passed" in result["answer"]
    assert "· write_file [ok" in done.stderr and "· shell [ok" in done.stderr
