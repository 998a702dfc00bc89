"""The agents against a real small model (see conftest.py): robustness, not accuracy."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time

import psutil
import pytest

from dsagent.artifacts.store import Store
from dsagent.graphs.chat import Chat, create_chat
from dsagent.graphs.grounding import check_grounding
from dsagent.graphs.runner import execute_agent_run

from .conftest import model_env, record

pytestmark = [pytest.mark.real_model, pytest.mark.timeout(1800)]

ENDED = {"succeeded", "failed", "unverified"}
SALES = "region,product,revenue\nNorth,Widget,120.5\nSouth,Gadget,80.25\nNorth,Gadget,40.0\nEast,Widget,99.0\nSouth,Widget,60.0\n"
SLACK = 200.0  # one model turn may start just before the wall-time budget ends (the budget is checked between turns)


def kernels_left() -> list[psutil.Process]:
    """Kernel processes this test process started and left running."""
    left = []
    for process in psutil.Process().children(recursive=True):
        try:  # a child that ends while we look (the model server's make, a kernel exiting) is not left
            if "ipykernel" in " ".join(process.cmdline()) and process.status() != psutil.STATUS_ZOMBIE:
                left.append(process)
        except psutil.Error:
            continue
    return left


def run_facts(settings, run_id: int, store: Store | None = None) -> dict:
    """Status, seconds, LLM calls and tokens of a finished run, and its cells and answer from the store."""
    if store is None:
        with Store.open(settings=settings) as own:
            return run_facts(settings, run_id, own)
    run = store.get_run(run_id)
    events = store.events(run_id)
    usage = next((e.payload for e in reversed(events) if e.type == "llm_usage"), {"total": {}})["total"]
    cells = [e.payload for e in events if e.type == "agent_cell"]
    answers = [e.payload.get("answer", "") for e in events if e.type == "agent_answer"]
    trimmed = [e.payload for e in events if e.type == "llm_prompt_trimmed"]
    seconds = (run.finished - run.started).total_seconds() if run.finished and run.started else None
    return {"run_id": run.id, "status": run.status, "error": (run.error or "")[:300], "seconds": round(seconds or 0, 1),
            "llm_calls": usage.get("calls"), "prompt_tokens": usage.get("prompt_tokens"),
            "completion_tokens": usage.get("completion_tokens"), "prompts_trimmed": len(trimmed),
            "cells": cells, "answer": answers[-1] if answers else ""}


def assert_robust(settings, facts: dict, *, data_question: bool = True) -> None:
    assert facts["status"] in ENDED, facts
    assert facts["seconds"] <= settings.agent_max_seconds + SLACK, facts
    if facts["status"] == "succeeded":  # never a verified answer the grounding check rejects
        assert check_grounding(facts["answer"], facts["cells"], needs_analysis=data_question) == [], facts
    assert kernels_left() == []


def keep(name: str, facts: dict) -> None:
    record(name, **{k: v for k, v in facts.items() if k not in ("cells", "answer")})


async def test_ask_ends_with_a_clear_status_and_never_a_verified_invention(model_settings, tmp_path, workspace_home):
    data = tmp_path / "sales.csv"
    data.write_text(SALES)
    env = model_env(model_settings, workspace_home)
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "dsagent", "ask", "Which region has the most revenue?", "--data", str(data), "--json",
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), model_settings.agent_max_seconds + SLACK)
    result = json.loads(out)
    facts = run_facts(model_settings, result["run_id"])
    keep("ask", {**facts, "wall_seconds": round(time.monotonic() - started, 1)})
    assert (proc.returncode == 0) == (result["status"] == "succeeded"), err
    if result["status"] != "succeeded":
        assert result["error"] and b"hint:" in err  # says what went wrong and what to do
    assert_robust(model_settings, facts)


async def test_code_ends_with_a_clear_status(model_settings):
    outcome = await execute_agent_run("Write add.py with a function add(a, b) returning a + b, and a pytest test for it",
                                      graph="coding", settings=model_settings)
    facts = run_facts(model_settings, outcome.run.id)
    keep("code", facts)
    assert_robust(model_settings, facts, data_question=False)


async def test_a_two_turn_chat_ends_each_turn_with_a_clear_status(model_settings, tmp_path):
    data = tmp_path / "sales.csv"
    data.write_text(SALES)
    # llama-cpp-python's generic chat format has no tool-call parser (tools are accepted and never called):
    # fenced mode lets the model's ```python blocks run, so turns exercise real cells
    model_settings = model_settings.replace(llm_tool_mode="fenced")
    with Store.open(settings=model_settings) as store:
        create_chat(store, "sales", [data])
        async with await Chat.open("sales", settings=model_settings, store=store) as chat:
            for number, question in enumerate(("What is the total revenue?", "And which product sells most?"), 1):
                outcome = await chat.ask(question)
                facts = run_facts(model_settings, outcome.run.id, store)
                keep(f"chat turn {number}", facts)
                assert facts["status"] in ENDED, facts
                if facts["status"] == "succeeded":
                    assert outcome.state.get("reviews", [{}])[-1].get("grounded"), facts
    assert kernels_left() == []


async def test_eval_dabench_five_questions_counts_only_verified_answers(model_settings, tmp_path, workspace_home):
    tables = tmp_path / "tables"
    tables.mkdir()
    (tables / "sales.csv").write_text(SALES)
    questions = [
        {"id": 1, "question": "What is the total revenue?", "format": "@total[value]"},
        {"id": 2, "question": "How many rows does the table have?", "format": "@rows[n]"},
        {"id": 3, "question": "Which region has the most revenue?", "format": "@region[name]"},
        {"id": 4, "question": "What is the mean revenue?", "constraints": "Round to 2 decimals.", "format": "@mean[value]"},
        {"id": 5, "question": "Which product appears most often?", "format": "@product[name]"},
    ]
    labels = [{"id": 1, "common_answers": [["total", "399.75"]]}, {"id": 2, "common_answers": [["rows", "5"]]},
              {"id": 3, "common_answers": [["region", "North"]]}, {"id": 4, "common_answers": [["mean", "79.95"]]},
              {"id": 5, "common_answers": [["product", "Widget"]]}]
    (tmp_path / "q.jsonl").write_text("".join(json.dumps({**q, "file_name": "sales.csv", "level": "easy"}) + "\n" for q in questions))
    (tmp_path / "l.jsonl").write_text("".join(json.dumps(a) + "\n" for a in labels))
    # fenced: see the chat test; a smaller budget per question, so five fit in a few minutes
    model_settings = model_settings.replace(llm_tool_mode="fenced", agent_max_seconds=120.0)
    env = model_env(model_settings, workspace_home)
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "dsagent", "eval", "dabench", "--questions", str(tmp_path / "q.jsonl"), "--labels",
        str(tmp_path / "l.jsonl"), "--tables", str(tables), "--json", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 5 * (model_settings.agent_max_seconds + SLACK))
    assert proc.returncode == 0, err
    report = json.loads(out)
    record("eval dabench (5 questions)", seconds=round(time.monotonic() - started, 1), statuses=report["statuses"],
           accuracy=report["accuracy_by_question"])
    assert report["questions"] == 5 and sum(report["statuses"].values()) == 5
    assert set(report["statuses"]) <= ENDED
    for row in report["results"]:
        facts = run_facts(model_settings, row["run_id"])
        keep(f"eval question {row['id']}", facts)
        assert_robust(model_settings, facts)
        assert not row["correct"] or row["status"] == "succeeded"
