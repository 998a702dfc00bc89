"""``dsagent eval dabench``: the analysis agent on InfiAgent-DABench's closed-form questions.

Input, as DABench ships it: a questions JSONL (``id``, ``question``,
``constraints``, ``format`` such as ``@mean_fare[mean_fare_value]``,
``file_name``, ``level``), a labels JSONL (``id``, ``common_answers``:
``[[name, value], ...]``) and the folder of tables. Each question is one
agent run (child of one ``batch`` run for the evaluation); the agent is asked
to end its answer with the ``@name[value]`` format, and each sub-answer is
scored: equal text, or both numbers and equal to the label's precision
(``34.6537`` matches a label of ``34.65``). A question is correct when all its
sub-answers are. The report (per question, per sub-answer, accuracy overall
and per level) is printed, written where asked, and stored as the batch run's
``json`` artifact.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dsagent.errors import AgentError
from dsagent.settings import Settings

__all__ = ["Question", "load_questions", "parse_answers", "run_dabench", "score_answer"]

_ANSWER = re.compile(r"@(\w+)\[([^\]]*)\]")
_NUMBER = re.compile(r"^-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?$")


@dataclass
class Question:
    id: Any
    question: str
    file_name: str
    format: str = ""
    constraints: str = ""
    level: str = ""
    labels: list[tuple[str, str]] = field(default_factory=list)

    def task(self) -> str:
        parts = [self.question]
        if self.constraints:
            parts.append(f"Constraints: {self.constraints}")
        if self.format:
            parts.append(f"End your answer with exactly this format (one @name[value] per sub-answer): {self.format}")
        return "\n\n".join(parts)


def _read_jsonl(path: Path, what: str) -> list[dict[str, Any]]:
    if not path.is_file():
        raise AgentError(f"the {what} file {str(path)!r} does not exist", hint=f"pass the DABench {what} JSONL", reason="bad_data")
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise AgentError(f"{path}:{number} is not JSON ({exc.msg})", hint=f"each line of the {what} file is one JSON object",
                             reason="bad_data") from None
    return rows


def load_questions(questions: Path, labels: Path, tables: Path, limit: int | None = None) -> list[Question]:
    """Questions joined with their labels; a question without a label or a table is an error that names it."""
    answers = {row["id"]: [(str(n), str(v)) for n, v in row.get("common_answers", [])] for row in _read_jsonl(labels, "labels")}
    found = []
    for row in _read_jsonl(questions, "questions"):
        if row.get("id") not in answers:
            raise AgentError(f"question {row.get('id')!r} has no label", hint="the labels file must have every question's id",
                             reason="bad_data")
        if not (tables / row["file_name"]).is_file():
            raise AgentError(f"question {row['id']!r} needs table {row['file_name']!r}, which is not in {tables}",
                             hint="pass the folder of DABench's tables with --tables", reason="bad_data")
        found.append(Question(row["id"], row["question"], row["file_name"], row.get("format", ""), row.get("constraints", ""),
                              row.get("level", ""), answers[row["id"]]))
    return found[:limit] if limit else found


def parse_answers(text: str) -> dict[str, str]:
    """``@name[value]`` pairs in an answer (the last one wins)."""
    return {name: value.strip() for name, value in _ANSWER.findall(text or "")}


def score_answer(predicted: str | None, label: str) -> bool:
    """Same text, or both numbers and equal to the label's decimals."""
    if predicted is None:
        return False
    a, b = predicted.strip(), label.strip()
    if a.lower() == b.lower():
        return True
    if _NUMBER.match(a) and _NUMBER.match(b):
        decimals = len(b.split(".")[1]) if "." in b and "e" not in b.lower() else 0
        return abs(float(a) - float(b)) <= 0.5 * 10 ** (-decimals) + 1e-9
    return False


async def run_dabench(
    questions: list[Question],
    tables: Path,
    *,
    settings: Settings | None = None,
    backend: str | None = None,
    concurrency: int = 1,
    on_result: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Ask every question (``concurrency`` at a time) and score; the report."""
    from dsagent.artifacts.models import NewArtifact
    from dsagent.artifacts.recorder import RunRecorder
    from dsagent.graphs.runner import execute_agent_run

    settings = settings or Settings()
    gate = asyncio.Semaphore(max(1, concurrency))
    results: list[dict[str, Any]] = []
    store = await asyncio.to_thread(_open_store, settings)
    try:
        async with RunRecorder(store, "batch", title=f"DABench evaluation ({len(questions)} questions)",
                               params={"questions": len(questions), "concurrency": concurrency}) as batch:

            async def one(q: Question) -> None:
                async with gate:
                    try:
                        outcome = await execute_agent_run(q.task(), [tables / q.file_name], backend=backend, settings=settings,
                                                          store=store, parent_id=batch.run_id)
                        answer, run_id, status = outcome.answer, outcome.run.id, outcome.run.status
                    except Exception as exc:  # one broken question must not end the evaluation
                        answer, run_id, status = f"error: {exc}", None, "failed"
                predicted = parse_answers(answer)
                # only a verified run's answer counts: an unverified one is wrong even if it guessed the label
                verified = status == "succeeded"
                subs = [{"name": n, "label": v, "predicted": predicted.get(n),
                         "correct": verified and score_answer(predicted.get(n), v)} for n, v in q.labels]
                correct = verified and all(s["correct"] for s in subs)
                row = {"id": q.id, "level": q.level, "run_id": run_id, "status": status, "correct": correct,
                       "sub_answers": subs}
                results.append(row)
                await batch.event("eval_result", row)
                if on_result is not None:
                    on_result(row)

            await asyncio.gather(*(one(q) for q in questions))
            results.sort(key=lambda r: str(r["id"]))
            report = _report(results)
            report["batch_run_id"] = batch.run_id
            await batch.add_artifacts([NewArtifact("dabench-report.json", "json", "application/json",
                                                   json.dumps(report, indent=2).encode("utf-8"))])
            await batch.finish("succeeded")
    finally:
        store.close()
    return report


def _accuracy(rows: list[dict[str, Any]]) -> float:
    return round(sum(r["correct"] for r in rows) / len(rows), 4) if rows else 0.0


def _report(results: list[dict[str, Any]]) -> dict[str, Any]:
    subs = [s for r in results for s in r["sub_answers"]]
    levels = sorted({r["level"] for r in results if r["level"]})
    return {
        "questions": len(results),
        "statuses": dict(sorted(Counter(r["status"] for r in results).items())),
        "accuracy_by_question": _accuracy(results),
        "accuracy_by_sub_answer": _accuracy(subs),
        "by_level": {level: _accuracy([r for r in results if r["level"] == level]) for level in levels},
        "results": results,
    }


def _open_store(settings: Settings) -> Any:
    from dsagent.artifacts.store import Store

    store = Store(settings=settings)
    store.setup()
    return store
