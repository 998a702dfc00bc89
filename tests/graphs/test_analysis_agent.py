"""The analysis agent end to end: scripted LLM over loopback HTTP, real kernels, a real store."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from dsagent.artifacts.store import Store
from dsagent.graphs.runner import execute_agent_run
from dsagent.runs.notebook_run import run_notebook
from dsagent.settings import Settings
from dsagent.testing.llm_server import LLMServer, Reply, ToolCall

SECRET = "sk-live-abcdef0123456789"
PLOT_CODE = (
    "df = load_table(data)\nprint('mean x:', df['x'].mean())\n"
    "import matplotlib.pyplot as plt\ndf.plot(x='x', y='y')\nplt.show()"
)
ACCEPT = Reply('{"verdict": "accept", "findings": []}', role="reviewer")


@pytest.fixture
def csv(tmp_path):
    path = tmp_path / "points.csv"
    path.write_text("x,y\n1,2\n2,4\n3,5\n4,9\n")
    return path


@pytest.fixture
def settings(workspace_home, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    return Settings(llm_model="scripted-model", llm_backoff_initial=0.01, llm_backoff_max=0.05, llm_timeout=10.0,
                    agent_backend="local", agent_cell_timeout=60.0)


def events(settings, run_id):
    with Store.open(settings=settings) as store:
        return store.events(run_id)


async def test_analysis_with_a_plot_gives_answer_png_and_a_notebook_that_reruns(csv, settings, tmp_path):
    script = [
        Reply("1. Load the table\n2. Mean of x\n3. Plot y against x"),
        Reply("Loading and plotting.", tool_calls=[ToolCall("run_code", {"code": PLOT_CODE})]),
        Reply("The mean of x is 2.5; the plot of y against x is the image artifact."),
        ACCEPT,
    ]
    with LLMServer(script) as llm:
        outcome = await execute_agent_run("Plot y against x and give the mean of x", [csv],
                                          settings=settings.replace(llm_base_url=llm.base_url))
        llm.assert_consumed()
        profile_prompt = llm.requests[0].messages[-1]["content"]
    assert outcome.run.status == "succeeded", outcome.run.error
    assert "2.5" in outcome.answer
    kinds = {a.kind for a in outcome.artifacts}
    assert {"image", "notebook"} <= kinds
    assert "4 rows x 2 columns" in profile_prompt and "x,y" not in profile_prompt  # the profile, not the raw file
    with Store.open(settings=settings) as store:
        png = next(a for a in outcome.artifacts if a.kind == "image")
        assert store.read_bytes(png.id).startswith(b"\x89PNG")
    types = [e.type for e in events(settings, outcome.run.id)]
    for expected in ("agent_profile", "agent_plan", "agent_act", "tool_call", "tool_result", "agent_answer", "agent_review",
                     "agent_finish", "llm_usage"):
        assert expected in types

    nb = nbformat.read(outcome.notebook_path, as_version=4)
    assert nb.cells[0].metadata.tags == ["parameters"] and str(csv) in nb.cells[0].source
    # the exported notebook re-runs on other data and reproduces the numbers
    other = tmp_path / "other.csv"
    other.write_text("x,y\n10,1\n20,2\n")
    rerun = await run_notebook(outcome.notebook_path, {"data": str(other)}, backend="local", settings=settings,
                               output_path=tmp_path / "rerun.ipynb")
    assert rerun.status == "succeeded", rerun.error
    texts = [o.get("text", "") for c in nbformat.read(tmp_path / "rerun.ipynb", as_version=4).cells if c.cell_type == "code"
             for o in c.get("outputs", [])]
    assert any("mean x: 15.0" in t for t in texts)
    rerun_same = await run_notebook(outcome.notebook_path, backend="local", settings=settings, output_path=tmp_path / "same.ipynb")
    texts = [o.get("text", "") for c in nbformat.read(tmp_path / "same.ipynb", as_version=4).cells if c.cell_type == "code"
             for o in c.get("outputs", [])]
    assert rerun_same.status == "succeeded" and any("mean x: 2.5" in t for t in texts)


async def test_an_error_is_shown_to_the_model_which_fixes_it(csv, settings):
    script = [
        Reply("1. Mean of z"),
        Reply(tool_calls=[ToolCall("run_code", {"code": "df = load_table(data)\ndf['z'].mean()"})]),
        Reply(tool_calls=[ToolCall("run_code", {"code": "df['y'].mean()"})]),
        Reply("There is no column z; the mean of y is 5.0."),
        ACCEPT,
    ]
    with LLMServer(script) as llm:
        outcome = await execute_agent_run("Mean of z", [csv], settings=settings.replace(llm_base_url=llm.base_url))
        told = llm.requests[2].messages[-1]["content"]
    assert "raised KeyError" in told and "'z'" in told
    assert outcome.run.status == "succeeded"
    nb = nbformat.read(outcome.notebook_path, as_version=4)
    assert any(c.cell_type == "markdown" and "Attempt that failed" in c.source and "KeyError" in c.source for c in nb.cells)


async def test_reviewer_rejects_an_unsupported_claim_and_the_revision_fixes_it(csv, settings):
    script = [
        Reply("1. Mean of y"),
        Reply(tool_calls=[ToolCall("run_code", {"code": "df = load_table(data)\nprint(df['y'].mean())"})]),
        Reply("The mean of y is 5.0 and its variance is 8.67."),  # the variance was never computed
        Reply('{"verdict": "revise", "findings": [{"severity": "error", "cell": null, "reason": "variance not computed", '
              '"fix": "compute it"}]}', role="reviewer"),
        Reply(tool_calls=[ToolCall("run_code", {"code": "print(df['y'].var())"})]),
        Reply("The mean of y is 5.0 and its variance is 8.67."),
        ACCEPT,
    ]
    with LLMServer(script) as llm:
        outcome = await execute_agent_run("Mean and variance of y", [csv], settings=settings.replace(llm_base_url=llm.base_url))
        llm.assert_consumed()
        revision_prompt = llm.requests[4].messages[-1]["content"]
    assert outcome.run.status == "succeeded"
    assert "variance not computed" in revision_prompt and "8.67, which no output shows" in revision_prompt
    reviews = outcome.state["reviews"]
    assert [r["verdict"] for r in reviews] == ["revise", "accept"]


async def test_step_budget_ends_the_run_failed_with_a_partial_notebook(csv, settings):
    loop = Reply(tool_calls=[ToolCall("run_code", {"code": "print('again')"})])
    with LLMServer([Reply("1. loop"), loop, loop, loop]) as llm:
        outcome = await execute_agent_run("Loop forever", [csv], settings=settings.replace(llm_base_url=llm.base_url, agent_max_steps=3))
        llm.assert_consumed()
    assert outcome.run.status == "failed" and "budget exhausted: 3 agent steps" in outcome.run.error
    nb = nbformat.read(outcome.notebook_path, as_version=4)
    assert sum("print('again')" in c.source for c in nb.cells if c.cell_type == "code") == 3
    assert "budget exhausted" in nb.cells[-1].source


async def test_bad_tool_calls_are_explained_and_secrets_never_kept(csv, settings):
    script = [
        Reply("1. try tools"),
        Reply(tool_calls=[ToolCall("run_sql", {"q": "select 1"}), ToolCall("run_code", "{not json"),
                          ToolCall("run_code", {"code": 5}), ToolCall("read_file", {"path": "../../etc/passwd"}),
                          ToolCall("run_code", {"code": f"print('{SECRET}')"})]),
        Reply("Done: nothing to report."),
        ACCEPT,
    ]
    with LLMServer(script) as llm:
        outcome = await execute_agent_run("Show what the tools say", [csv], settings=settings.replace(llm_base_url=llm.base_url))
        told = [m["content"] for m in llm.requests[2].messages if m["role"] == "tool"]
    assert "there is no tool named 'run_sql'" in told[0] and "run_code" in told[0]
    assert "not valid JSON" in told[1]
    assert "argument 'code' of run_code must be a string, not int" in told[2]
    assert "outside the work dir" in told[3]
    assert SECRET not in told[4] and "[redacted OPENAI_API_KEY]" in told[4]
    assert outcome.run.status == "succeeded"
    with Store.open(settings=settings) as store:
        everything = json.dumps([e.payload for e in store.events(outcome.run.id)])
        blobs = b"".join(store.read_bytes(a.id) for a in store.list_artifacts(run_id=outcome.run.id, limit=100).items)
    assert SECRET not in everything and SECRET.encode() not in blobs
    assert SECRET not in outcome.notebook_path.read_text()
    # the kernel itself never had the key
    with LLMServer([Reply("1. Look"), Reply(tool_calls=[ToolCall("run_code", {"code": "import os; print(os.environ.get('OPENAI_API_KEY'))"})]),
                    Reply("ok"), ACCEPT]) as llm:
        outcome = await execute_agent_run("env", [], settings=settings.replace(llm_base_url=llm.base_url))
        told = [m["content"] for m in llm.requests[2].messages if m["role"] == "tool"]
    assert "None" in told[0]


def dsagent_cli(*args: str, env: dict[str, str]) -> "subprocess.CompletedProcess[str]":
    return subprocess.run([sys.executable, "-m", "dsagent", *args], env=env, capture_output=True, text=True, timeout=180)


def test_cli_ask_streams_steps_and_prints_one_json_object(csv, workspace_home):
    script = [
        Reply("1. Load\n2. Plot"),
        Reply(tool_calls=[ToolCall("run_code", {"code": PLOT_CODE})]),
        Reply("The mean of x is 2.5; the plot is the image artifact."),
        ACCEPT,
    ]
    with LLMServer(script) as llm:
        env = {**os.environ, "OPENAI_BASE_URL": llm.base_url, "OPENAI_API_KEY": SECRET, "DSAGENT_HOME": str(workspace_home)}
        done = dsagent_cli("ask", "Plot y against x and give the mean of x", "--data", str(csv), "--json", env=env)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["status"] == "succeeded" and "2.5" in result["answer"]
    assert {a["kind"] for a in result["artifacts"]} >= {"image", "notebook"}
    assert Path(result["notebook"]).is_file()
    assert "· plan:" in done.stderr and "· run_code [ok" in done.stderr and "· review: accept" in done.stderr
    with Store.open(settings=Settings()) as store:  # DSAGENT_HOME of this test; sandbox was the backend
        assert store.get_run(result["run_id"]).backend == "sandbox"


def test_cli_ask_endpoint_down_fails_with_a_clear_error(csv, workspace_home):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    env = {**os.environ, "OPENAI_BASE_URL": f"http://127.0.0.1:{port}/v1", "OPENAI_API_KEY": SECRET,
           "DSAGENT_HOME": str(workspace_home), "DSAGENT_LLM_MAX_RETRIES": "1", "DSAGENT_LLM_BACKOFF_INITIAL": "0.01",
           "DSAGENT_AGENT_BACKEND": "local"}
    done = dsagent_cli("ask", "Mean of x", "--data", str(csv), env=env)
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "LLMUnavailable" in done.stderr and f"127.0.0.1:{port}" in done.stderr
    assert SECRET not in done.stdout + done.stderr
    done = dsagent_cli("ask", "Mean of x", "--data", "/no/such.csv", env=env)
    assert done.returncode == 2 and "data file '/no/such.csv' does not exist" in done.stderr


async def test_approve_runs_what_was_allowed_and_tells_the_model_what_was_not(csv, settings, tmp_path):
    asked = []

    def approver(request):
        asked.append(request)
        return {"approved": "allowed" in request["arguments"]["code"], "reason": "not that one"}

    script = [
        Reply("1. two cells"),
        Reply(tool_calls=[ToolCall("run_code", {"code": "print('allowed 1')"}), ToolCall("run_code", {"code": "print('denied')"}),
                          ToolCall("run_code", {"code": "print('allowed 2')"})]),
        Reply("Done."),
        ACCEPT,
    ]
    with LLMServer(script) as llm:
        outcome = await execute_agent_run("Two cells", [csv], settings=settings.replace(llm_base_url=llm.base_url), approve=approver)
        told = [m["content"] for m in llm.requests[2].messages if m["role"] == "tool"]
    assert [a["arguments"]["code"] for a in asked] == ["print('allowed 1')", "print('denied')", "print('allowed 2')"]
    assert "allowed 1" in told[0] and "the user did not allow this run_code call: not that one" in told[1] and "allowed 2" in told[2]
    with Store.open(settings=settings) as store:
        started = [e.payload["code"] for e in store.events(outcome.run.id) if e.type == "cell_started"]
    # each approved cell ran once, although the node ran again after each answer; the refused one never ran
    assert started.count("print('allowed 1')") == 1 and started.count("print('allowed 2')") == 1 and "print('denied')" not in started
    assert outcome.run.status == "succeeded"


def test_cli_approve_reads_the_answers_from_stdin(csv, workspace_home):
    script = [
        Reply("1. Look"),
        Reply(tool_calls=[ToolCall("run_code", {"code": "print('first')"})]),
        Reply(tool_calls=[ToolCall("run_code", {"code": "print('second')"})]),
        Reply("Done."),
        ACCEPT,
    ]
    with LLMServer(script) as llm:
        env = {**os.environ, "OPENAI_BASE_URL": llm.base_url, "OPENAI_API_KEY": SECRET, "DSAGENT_HOME": str(workspace_home),
               "DSAGENT_AGENT_BACKEND": "local"}
        done = subprocess.run([sys.executable, "-m", "dsagent", "ask", "two", "--data", str(csv), "--approve", "--json"], env=env,
                              input="y\nno thanks\n", capture_output=True, text=True, timeout=180)
        told = [m["content"] for m in llm.requests[3].messages if m["role"] == "tool"]
    assert done.returncode == 0, done.stderr
    assert "the agent wants to run_code:\nprint('first')" in done.stderr and "· refused: run_code (no thanks)" in done.stderr
    assert "first" in told[0] and "did not allow this run_code call: no thanks" in told[1]


async def test_streamed_tokens_reach_the_run_events_in_slices(csv, settings):
    long_answer = "The mean of x is 2.5. " + "This sentence streams slowly. " * 12
    script = [Reply("1. mean"), Reply(tool_calls=[ToolCall("run_code", {"code": "print(load_table(data)['x'].mean())"})]),
              Reply(long_answer, chunk_size=8, chunk_delay=0.03), ACCEPT]
    with LLMServer(script) as llm:
        outcome = await execute_agent_run("Mean of x", [csv], settings=settings.replace(llm_base_url=llm.base_url))
    with Store.open(settings=settings) as store:
        slices = [e.payload["text"] for e in store.events(outcome.run.id) if e.type == "agent_tokens"]
    answer_slices = slices[1:]  # the first slice is the plan
    assert slices[0] == "1. mean"
    assert "".join(answer_slices) == long_answer and len(answer_slices) >= 2  # ~1.4 s of streaming, a write per 0.5 s


async def test_endpoint_without_tools_falls_back_to_python_blocks(csv, settings):
    """An endpoint that refuses `tools` (vLLM without a tool parser): the graph goes on with ```python blocks."""
    script = [
        Reply("1. mean of x"),
        Reply("Let me compute it.\n```python\nprint('mean x:', load_table(data)['x'].mean())\n```"),
        Reply("The mean of x is 2.5."),
        ACCEPT,
    ]
    with LLMServer(script, tools_supported=False) as llm:
        outcome = await execute_agent_run("Mean of x", [csv], settings=settings.replace(llm_base_url=llm.base_url))
        llm.assert_consumed()
        followup = llm.requests_for("planner")[-1]
    assert outcome.run.status == "succeeded" and "2.5" in outcome.answer
    assert any("mean x: 2.5" in c.get("observation", "") for c in outcome.state["cells"])
    assert followup.tools == [] and "```python" in json.dumps(followup.messages)
    with Store.open(settings=settings) as store:
        assert any(e.type == "agent_llm_fallback" for e in store.events(outcome.run.id))


async def test_429_and_a_hung_request_are_retried_then_the_run_goes_on(csv, settings):
    from dsagent.testing.llm_server import Fault

    script = [Fault.http(429, retry_after=0.05), Reply("1. mean"), Fault.hang(3.0),
              Reply(tool_calls=[ToolCall("run_code", {"code": "print(load_table(data)['x'].mean())"})]),
              Reply("The mean of x is 2.5."), ACCEPT]
    with LLMServer(script) as llm:
        outcome = await execute_agent_run("Mean of x", [csv], settings=settings.replace(llm_base_url=llm.base_url, llm_timeout=1.0))
        llm.assert_consumed()
    assert outcome.run.status == "succeeded"
    with Store.open(settings=settings) as store:
        retries = [e.payload for e in store.events(outcome.run.id) if e.type == "agent_llm_retry"]
    assert [r["reason"] for r in retries] == ["rate_limit", "timeout"]
