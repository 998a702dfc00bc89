"""`dsagent eval dabench` on a small question set of our own, with a scripted model: right, wrong and missing answers."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from dsagent.artifacts.store import Store
from dsagent.graphs.evaluation import parse_answers, score_answer
from dsagent.settings import Settings
from dsagent.testing.llm_server import LLMServer, Reply, ToolCall

QUESTIONS = [
    {"id": 1, "question": "What is the mean fare?", "constraints": "Round to 2 decimals.", "format": "@mean_fare[value]",
     "file_name": "fares.csv", "level": "easy"},
    {"id": 2, "question": "How many rows and what is the max fare?", "format": "@rows[n] @max_fare[value]",
     "file_name": "fares.csv", "level": "medium"},
    {"id": 3, "question": "Which class is most common?", "format": "@class[name]", "file_name": "fares.csv", "level": "easy"},
]
LABELS = [{"id": 1, "common_answers": [["mean_fare", "20.00"]]},
          {"id": 2, "common_answers": [["rows", "3"], ["max_fare", "30.5"]]},
          {"id": 3, "common_answers": [["class", "second"]]}]
ACCEPT = Reply('{"verdict": "accept", "findings": []}', role="reviewer")


def question_script(code: str, answer: str) -> list[Reply]:
    return [Reply("1. compute"), Reply(tool_calls=[ToolCall("run_code", {"code": code})]), Reply(answer), ACCEPT]


@pytest.mark.parametrize(("predicted", "label", "correct"), [
    ("34.6537", "34.65", True), ("34.66", "34.65", False), ("3", "3", True), ("3.0", "3", True), ("Second", "second", True),
    ("first", "second", False), (None, "1", False), ("1e3", "1000", True),
])
def test_score_answer(predicted, label, correct):
    assert score_answer(predicted, label) is correct


def test_parse_answers_takes_every_pair():
    assert parse_answers("so @rows[3] and @max_fare[ 30.5 ]") == {"rows": "3", "max_fare": "30.5"}


def test_eval_scores_a_small_set_including_a_wrong_answer(tmp_path, workspace_home):
    tables = tmp_path / "tables"
    tables.mkdir()
    (tables / "fares.csv").write_text("fare,class\n10.0,first\n19.5,second\n30.5,second\n")
    (tmp_path / "q.jsonl").write_text("\n".join(json.dumps(q) for q in QUESTIONS) + "\n")
    (tmp_path / "l.jsonl").write_text("\n".join(json.dumps(a) for a in LABELS) + "\n")
    script = [
        *question_script("df = load_table(data)\nprint(round(df['fare'].mean(), 2))", "The mean fare is 20.0. @mean_fare[20.0]"),
        *question_script("df = load_table(data)\nprint(len(df), df['fare'].max())", "3 rows, max 30.5. @rows[3] @max_fare[31.5]"),
        *question_script("df = load_table(data)\nprint(df['class'].mode()[0])", "The most common class is second. @class[second]"),
    ]
    with LLMServer(script) as llm:
        env = {**os.environ, "OPENAI_BASE_URL": llm.base_url, "OPENAI_API_KEY": "sk-test-0123456789", "DSAGENT_HOME": str(workspace_home),
               "DSAGENT_AGENT_BACKEND": "local", "DSAGENT_AGENT_MAX_REVISIONS": "0"}
        done = subprocess.run([sys.executable, "-m", "dsagent", "eval", "dabench", "--questions", str(tmp_path / "q.jsonl"),
                               "--labels", str(tmp_path / "l.jsonl"), "--tables", str(tables), "-o", str(tmp_path / "r.json"), "--json"],
                              env=env, capture_output=True, text=True, timeout=300)
        llm.assert_consumed()
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["questions"] == 3 and report["accuracy_by_question"] == round(2 / 3, 4)
    # question 2 states 31.5, which no output shows: its run ends unverified, so even its right @rows[3] counts as wrong
    assert report["accuracy_by_sub_answer"] == 0.5 and report["by_level"] == {"easy": 1.0, "medium": 0.0}
    assert report["statuses"] == {"succeeded": 2, "unverified": 1}
    wrong = next(r for r in report["results"] if r["id"] == 2)
    assert wrong["status"] == "unverified"
    assert [s["correct"] for s in wrong["sub_answers"]] == [False, False] and wrong["sub_answers"][1]["predicted"] == "31.5"
    assert json.loads((tmp_path / "r.json").read_text()) == report
    assert "[3/3] question 3: correct" in done.stderr
    with Store.open(settings=Settings()) as store:
        batch = store.get_run(report["batch_run_id"])
        children = [store.get_run(r["run_id"]) for r in report["results"]]
        stored = store.list_artifacts(run_id=batch.id, kind="json", limit=5).items
    assert batch.kind == "batch" and batch.status == "succeeded"
    assert {c.parent_id for c in children} == {batch.id} and {c.kind for c in children} == {"agent"}
    assert [a.name for a in stored] == ["dabench-report.json"]


def test_eval_refuses_bad_input_clearly(tmp_path, workspace_home):
    (tmp_path / "q.jsonl").write_text(json.dumps(QUESTIONS[0]) + "\n")
    (tmp_path / "l.jsonl").write_text("not json\n")
    env = {**os.environ, "DSAGENT_HOME": str(workspace_home), "OPENAI_API_KEY": "k"}
    base = [sys.executable, "-m", "dsagent", "eval", "dabench", "--questions", str(tmp_path / "q.jsonl"), "--tables", str(tmp_path)]
    done = subprocess.run([*base, "--labels", str(tmp_path / "l.jsonl")], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "l.jsonl:1 is not JSON" in done.stderr
    (tmp_path / "l.jsonl").write_text(json.dumps(LABELS[0]) + "\n")
    done = subprocess.run([*base, "--labels", str(tmp_path / "l.jsonl")], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "needs table 'fares.csv'" in done.stderr
