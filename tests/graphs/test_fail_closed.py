"""Agents fail closed: what cannot be read is not an accept, and an answer the run does not support never
ends ``succeeded``. Scripted LLM over loopback HTTP, real kernels, a real store."""

from __future__ import annotations

import json

import pytest

from dsagent.artifacts.store import Store
from dsagent.graphs.grounding import check_grounding
from dsagent.graphs.plans import parse_plan
from dsagent.graphs.runner import execute_agent_run
from dsagent.settings import Settings
from dsagent.testing.llm_server import LLMServer, Reply, ToolCall

ACCEPT = Reply('{"verdict": "accept", "findings": []}', role="reviewer")
LOAD = "df = load_table(data)\nprint(df.groupby('region')['revenue'].sum().sort_values())"


@pytest.fixture
def sales(tmp_path):
    path = tmp_path / "sales.csv"
    path.write_text("region,revenue\nNorth,120.5\nSouth,80.25\nNorth,40.0\nEast,99.0\n")
    return path


@pytest.fixture
def settings(workspace_home, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-0123456789")
    return Settings(llm_model="scripted-model", llm_backoff_initial=0.01, llm_backoff_max=0.05, llm_timeout=10.0,
                    agent_backend="local", agent_cell_timeout=60.0, agent_max_revisions=0)


def events(settings, run_id, kind):
    with Store.open(settings=settings) as store:
        return [e.payload for e in store.events(run_id) if e.type == kind]


async def test_an_unreadable_review_is_asked_again_with_the_format_then_not_accepted(sales, settings):
    script = [
        Reply("1. Sum revenue by region"),
        Reply(tool_calls=[ToolCall("run_code", {"code": LOAD})]),
        Reply("North has the most revenue: 160.5."),
        Reply("Looks fine to me!", role="reviewer"),
        Reply("I accept.", role="reviewer"),
    ]
    with LLMServer(script) as llm:
        outcome = await execute_agent_run("Which region has the most revenue?", [sales],
                                          settings=settings.replace(llm_base_url=llm.base_url))
        llm.assert_consumed()
        again = llm.requests_for("reviewer")[1].messages[-1]["content"]
    assert "not usable" in again and '{"verdict": "accept", "findings": []}' in again  # the format, restated
    assert outcome.run.status == "failed"  # the answer is grounded, but nobody could accept it
    assert "reviewer's reply could not be read twice" in outcome.run.error
    review = events(settings, outcome.run.id, "agent_review")[-1]
    assert review["verdict"] == "revise" and review["grounded"] is True


async def test_a_plan_that_cannot_be_read_twice_ends_the_run(sales, settings):
    script = [Reply("Sure! Let me think about revenue."), Reply("")]
    with LLMServer(script) as llm:
        outcome = await execute_agent_run("Which region has the most revenue?", [sales],
                                          settings=settings.replace(llm_base_url=llm.base_url))
        llm.assert_consumed()
        again = llm.requests[1].messages[-1]["content"]
    assert '{"steps": [' in again
    assert outcome.run.status == "failed" and "planner's reply could not be read twice" in outcome.run.error
    assert "the reply is empty" in outcome.run.error


async def test_an_answer_without_an_analysis_cell_is_unverified(sales, settings):
    script = [Reply('{"steps": ["Answer"]}'), Reply("South Asia has the most revenue."), ACCEPT]
    with LLMServer(script) as llm:
        outcome = await execute_agent_run("Which region has the most revenue?", [sales],
                                          settings=settings.replace(llm_base_url=llm.base_url))
        llm.assert_consumed()
    assert outcome.run.status == "unverified", outcome.run.error
    assert "no analysis cell ran" in outcome.run.error
    finish = events(settings, outcome.run.id, "agent_finish")[-1]
    assert finish["status"] == "unverified"


async def test_an_ungrounded_number_goes_back_to_the_agent_which_fixes_it(sales, settings):
    script = [
        Reply("1. Sum revenue by region"),
        Reply(tool_calls=[ToolCall("run_code", {"code": LOAD})]),
        Reply("North has the most revenue: 175.3."),  # invented: the output says 160.5
        Reply('{"verdict": "accept", "findings": []}', role="reviewer"),  # a lenient reviewer: the check is not the model's
        Reply("North has the most revenue: 160.5."),
        ACCEPT,
    ]
    with LLMServer(script) as llm:
        outcome = await execute_agent_run("Which region has the most revenue?", [sales],
                                          settings=settings.replace(llm_base_url=llm.base_url, agent_max_revisions=1))
        llm.assert_consumed()
        told = llm.requests[4].messages[-1]["content"]
    assert "the answer states 175.3, which no output shows" in told
    assert outcome.run.status == "succeeded", outcome.run.error
    reviews = events(settings, outcome.run.id, "agent_review")
    assert [r["grounded"] for r in reviews] == [False, True]


async def test_an_ungrounded_number_left_standing_ends_unverified(sales, settings):
    script = [
        Reply("1. Sum revenue by region"),
        Reply(tool_calls=[ToolCall("run_code", {"code": LOAD})]),
        Reply("North has the most revenue: 175.3."),
        ACCEPT,
    ]
    with LLMServer(script) as llm:
        outcome = await execute_agent_run("Which region has the most revenue?", [sales],
                                          settings=settings.replace(llm_base_url=llm.base_url))
        llm.assert_consumed()
    assert outcome.run.status == "unverified" and "175.3" in outcome.run.error


async def test_an_invented_category_ends_unverified_and_the_cli_says_so(sales, settings, workspace_home):
    import asyncio
    import os
    import sys

    script = [
        Reply("1. Sum revenue by region"),
        Reply(tool_calls=[ToolCall("run_code", {"code": LOAD})]),
        Reply('The region "South Asia" leads with 160.5, driven by "Box of Spam".'),
        ACCEPT,
    ]
    with LLMServer(script) as llm:
        env = {**os.environ, "OPENAI_BASE_URL": llm.base_url, "DSAGENT_LLM_MODEL": "scripted-model",
               "DSAGENT_AGENT_BACKEND": "local", "DSAGENT_AGENT_MAX_REVISIONS": "0"}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "dsagent", "ask", "Which region has the most revenue?", "--data", str(sales), "--json",
            env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 120)
        llm.assert_consumed()
    result = json.loads(out)
    assert proc.returncode != 0 and result["status"] == "unverified"
    assert "'South Asia', 'Box of Spam'" in result["error"] and "neither the data nor any output contains" in result["error"]


def test_grounding_rules_on_their_own():
    cells = [{"cell": 0, "kind": "code", "role": "setup", "status": "ok", "observation": "region revenue\nNorth 120.5"},
             {"cell": 1, "kind": "code", "role": "analyst", "status": "ok", "observation": "North    160.50\nshare 0.4213"},
             {"cell": 2, "kind": "code", "role": "analyst", "status": "error", "observation": "East 999.0"}]
    assert check_grounding('"North" leads with 160.5 (42.1%), `revenue` summed.', cells, profile="region revenue") == []
    found = check_grounding("East has 999.0 and 'West' 12.", cells)  # a failed cell's output shows nothing
    assert [f["reason"] for f in found] == ["the answer states 999.0, which no output shows",
                                            "the answer names 'West', which neither the data nor any output contains"]
    assert all(f["source"] == "grounding" and f["severity"] == "error" for f in found)
    # references, quotes of the task and of the code are not claims about the data
    found = check_grounding('See #45; you asked "which region leads"; **Summary**: `groupby` ran.',
                            [*cells, {"cell": 3, "kind": "code", "status": "ok", "code": "df.groupby('region')", "observation": ""}],
                            task="Which region leads?")
    assert found == []
    ran = [*cells, {"cell": 4, "kind": "code", "status": "ok", "code": "df[df.region == 'South Asia']", "observation": "Empty"}]
    assert "'South Asia'" in check_grounding('"South Asia" leads.', ran)[0]["reason"]  # code that names it is no proof
    setup_only = cells[:1]
    assert "no analysis cell ran" in check_grounding("North.", setup_only)[0]["reason"]
    assert check_grounding("North.", setup_only, needs_analysis=False) == []


def test_plans_are_read_from_json_or_a_list_and_nothing_else():
    assert parse_plan('{"steps": ["load", "sum"]}') == ["load", "sum"]
    assert parse_plan("Plan:\n1. load\n2) sum\n- plot") == ["load", "sum", "plot"]
    for text, why in (("", "empty"), ("I will do it.", "neither"), ('{"steps": []}', "holds no step")):
        with pytest.raises(ValueError, match=why):
            parse_plan(text)
