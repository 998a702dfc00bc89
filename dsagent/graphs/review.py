"""The reviewer: do the outputs support the answer?

Two kinds of check, merged into one list of findings (severity, cell, reason,
fix):

- checks in code that need no model: the grounding check (``grounding.py``:
  an executed analysis cell, numbers and quoted names the outputs show), a
  plot asked for but none made, an answer resting on a cell that failed;
- the ``reviewer`` model, given the task, the cells (code + trimmed outputs)
  and the answer, replying in JSON (``REVIEW_SCHEMA``, as structured output
  where the endpoint takes it). A reply that cannot be read is asked for
  once more, then counts as *not accepted*: nothing turns "could not read"
  into "accept".

``review_work`` is what the other graphs call; ``build_review_graph`` wraps it
as a graph of its own (``dsagent review``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any, TypedDict

from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime

from dsagent.graphs.grounding import GROUNDING, check_grounding
from dsagent.graphs.state import BLOCKING, CellRecord, Finding

__all__ = ["REVIEW_SCHEMA", "REVIEW_SYSTEM", "ReviewState", "build_review_graph", "check_outputs", "parse_review", "review_work"]

REVIEW_SYSTEM = """You review a data analysis done in a Jupyter kernel. Check that the outputs support every claim \
of the answer: numbers must appear in (or follow directly from) the outputs, plots must exist when the task asks \
for them, rows must not be dropped silently, errors must not be ignored. Reply with JSON only:
{"verdict": "accept" or "revise", "findings": [{"severity": "error"|"warning"|"info", "cell": <cell number or null>, \
"reason": "...", "fix": "..."}]}
Use severity "error" only for problems that make the answer wrong or unsupported."""

_PLOT_WORDS = re.compile(r"\b(plot|chart|graph|figure|histogram|visuali[sz]e|scatter|bar ?chart|line ?chart)", re.IGNORECASE)
_CELLS_CHARS = 40_000  # of cell text the reviewer sees (the latest cells win)


class ReviewState(TypedDict, total=False):
    task: str
    cells: list[CellRecord]
    answer: str
    verdict: str
    findings: list[Finding]


def _finding(severity: str, cell: int | None, reason: str, fix: str) -> Finding:
    return Finding(severity=severity, cell=cell, reason=reason, fix=fix)  # type: ignore[typeddict-item]


def check_outputs(task: str, cells: Sequence[CellRecord], answer: str, earlier: str = "", *, profile: str = "",
                  needs_analysis: bool = False) -> list[Finding]:
    """The checks that need no model; ``earlier``: a chat's earlier turns, whose outputs count as shown;
    ``profile``: the data profile (its numbers and names count as shown); ``needs_analysis``: a data question,
    which only an executed analysis cell can answer (see ``grounding.py``)."""
    findings: list[Finding] = []
    code_cells = [c for c in cells if c.get("kind", "code") in ("code", "shell") and c.get("role") != "setup"]
    if code_cells and code_cells[-1].get("status") != "ok":
        last = code_cells[-1]
        findings.append(_finding("error", last["cell"], f"the last cell failed ({last.get('status')}) and the answer came after it",
                                 "fix the failing code and run it again before answering"))
    if _PLOT_WORDS.search(task) and not any(a.get("kind") == "image" for c in cells for a in c.get("artifacts", [])):
        findings.append(_finding("error", None, "the task asks for a plot but no cell produced an image",
                                 "draw the plot with matplotlib and show it (plt.show())"))
    findings.extend(check_grounding(answer, cells, profile=profile, earlier=earlier, needs_analysis=needs_analysis,
                                    task=task))
    return findings


def parse_review(text: str) -> tuple[str, list[Finding]]:
    """The reviewer's JSON (bare, or in a ```json block) as (verdict, findings); ValueError says what is wrong."""
    match = re.search(r"\{.*\}", text, re.DOTALL)
    if not match:
        raise ValueError("the reply holds no JSON object")
    try:
        data = json.loads(match.group(0))
    except json.JSONDecodeError as exc:
        raise ValueError(f"the JSON does not parse: {exc.msg} at line {exc.lineno}") from None
    verdict = data.get("verdict")
    if verdict not in ("accept", "revise"):
        raise ValueError('"verdict" must be "accept" or "revise"')
    findings = []
    for item in data.get("findings") or []:
        if not isinstance(item, dict) or not item.get("reason"):
            raise ValueError('each finding needs at least a "reason"')
        severity = item.get("severity") if item.get("severity") in ("error", "warning", "info") else "warning"
        cell = item.get("cell") if isinstance(item.get("cell"), int) else None
        findings.append(_finding(severity, cell, str(item["reason"]), str(item.get("fix") or "")))
    if verdict == "revise" and not any(f["severity"] in BLOCKING for f in findings):
        findings.append(_finding("error", None, "the reviewer asked for a revision", "address the findings above"))
    return verdict, findings


def _cells_text(cells: Sequence[CellRecord]) -> str:
    parts = []
    for c in cells:
        parts.append(f"--- cell {c['cell']} ({c.get('kind', 'code')}, {c.get('status')})\n{c.get('code', '')[:2000]}\n"
                     f">>> {c.get('observation', '')[:2500]}")
    text = "\n".join(parts)
    return text if len(text) <= _CELLS_CHARS else "[earlier cells left out]\n" + text[-_CELLS_CHARS:]


REVIEW_SCHEMA = {
    "type": "object",
    "properties": {
        "verdict": {"type": "string", "enum": ["accept", "revise"]},
        "findings": {"type": "array", "items": {
            "type": "object",
            "properties": {"severity": {"type": "string", "enum": ["error", "warning", "info"]},
                           "cell": {"type": ["integer", "null"]}, "reason": {"type": "string"}, "fix": {"type": "string"}},
            "required": ["severity", "reason"],
        }},
    },
    "required": ["verdict", "findings"],
}
REVIEW_MAX_TOKENS = 1000  # a verdict and a few findings; a small model left unbounded repeats findings to the context's end
REVIEW_FORMAT = ('Reply with one JSON object and nothing else, e.g. {"verdict": "accept", "findings": []} or '
                 '{"verdict": "revise", "findings": [{"severity": "error", "cell": 3, "reason": "...", "fix": "..."}]}')


async def review_work(ctx: Any, task: str, cells: Sequence[CellRecord], answer: str,
                      extra_checks: Any = None, earlier: str = "", *, profile: str = "",
                      needs_analysis: bool = False) -> dict[str, Any]:
    """Review one piece of work: ``{"verdict", "findings", "source", "grounded"}``; ``ctx`` is an ``AgentContext``.

    ``extra_checks(task, cells, answer)``: more checks in code (the coder's: did the tests pass?).
    ``earlier``: a chat's earlier turns (the answer may rest on their outputs); ``profile`` and
    ``needs_analysis``: see ``check_outputs``. Fails closed: a reply that cannot be read is asked
    for again once, with the format restated, and then counts as *not accepted* (an error finding).
    """
    findings = check_outputs(task, cells, answer, earlier, profile=profile, needs_analysis=needs_analysis)
    if extra_checks is not None:
        findings.extend(extra_checks(task, cells, answer))
    checks = "\n".join(f"- [{f['severity']}] {f['reason']}" for f in findings) or "- none"
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": REVIEW_SYSTEM},
        {"role": "user", "content": (f"Earlier turns of the conversation:\n{earlier}\n\n" if earlier else "")
                                    + f"Task:\n{task}\n\nCells:\n{_cells_text(cells)}\n\nAnswer:\n{answer}\n\n"
                                    f"Automatic checks found:\n{checks}"},
    ]
    verdict_of_model, source = "unread", "checks+reviewer"
    for attempt in range(2):
        reply = await ctx.llm.chat(messages, role="reviewer", on_event=ctx.on_llm_event, schema=("review", REVIEW_SCHEMA),
                                   max_tokens=REVIEW_MAX_TOKENS)
        try:
            verdict_of_model, from_model = parse_review(reply.text)
            findings.extend(from_model)
            break
        except ValueError as exc:
            if attempt == 1:  # fail closed: what cannot be read is not an accept
                findings.append(_finding("error", None, f"the reviewer's reply could not be read twice ({exc}), so the "
                                                        "work is not accepted", "answer again, plainly, from the outputs"))
                source = "checks"
                break
            messages += [{"role": "assistant", "content": reply.text},
                         {"role": "user", "content": f"That reply is not usable: {exc}. {REVIEW_FORMAT}"}]
    verdict = "revise" if any(f["severity"] in BLOCKING for f in findings) else "accept"
    grounded = not any(f.get("source") == GROUNDING for f in findings)
    return {"verdict": verdict, "findings": findings, "source": source, "model_verdict": verdict_of_model,
            "grounded": grounded}


def build_review_graph():
    """A graph of one node that reviews ``task`` + ``cells`` + ``answer``; run it with an ``AgentContext``."""

    async def review(state: ReviewState, runtime: Runtime[Any]) -> dict[str, Any]:
        result = await review_work(runtime.context, state.get("task", ""), state.get("cells", []), state.get("answer", ""))
        await runtime.context.step("review", {"verdict": result["verdict"], "findings": result["findings"]})
        return {"verdict": result["verdict"], "findings": result["findings"]}

    graph = StateGraph(ReviewState)
    graph.add_node("review", review)
    graph.add_edge(START, "review")
    graph.add_edge("review", END)
    return graph.compile()
