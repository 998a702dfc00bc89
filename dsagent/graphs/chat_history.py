"""A chat's earlier turns, read back from the store: for the model's prompt, for replay, for export.

Every turn is an agent run whose events already hold what is needed: each
finished cell as an ``agent_cell`` event (code, status, outputs, the
observation the model saw), the plan, the answer, the reviews. Reading them
from the store (not from memory) is what makes a chat durable: a new process
rebuilds the same history and the same kernel state.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dsagent.graphs.state import CellRecord
from dsagent.graphs.tools import trim

if TYPE_CHECKING:
    from dsagent.artifacts.models import Run
    from dsagent.artifacts.store import Store

__all__ = ["TurnRecord", "load_turn", "load_turns", "profile_of", "render_history", "replay_cells"]

CHARS_PER_TOKEN = 4  # the same rough estimate the LLM client uses when an endpoint reports no usage
_OUTPUT_CHARS = 600  # of each cell's output a history entry keeps


@dataclass
class TurnRecord:
    """One turn as the store has it (a finished, failed, cancelled or still running agent run)."""

    run_id: int
    number: int  # 1, 2, ... in the chat
    task: str
    graph: str
    status: str
    plan: str = ""
    answer: str = ""
    error: str | None = None
    cells: list[CellRecord] = field(default_factory=list)
    reviews: list[dict[str, Any]] = field(default_factory=list)
    profile: str = ""  # the datasets' profile (the first turn that made one)

    def as_state(self) -> dict[str, Any]:
        """The turn in the shape ``graphs.export`` reads (an AgentState)."""
        return {"task": self.task, "plan": self.plan, "cells": self.cells, "answer": self.answer, "reviews": self.reviews,
                "status": "failed" if self.status in ("failed", "cancelled") else self.status, "error": self.error}

    def to_json(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "number": self.number, "task": self.task, "graph": self.graph, "status": self.status,
                "answer": self.answer, "error": self.error, "cells": len(self.cells)}


def load_turns(store: "Store", chat_id: int) -> list[TurnRecord]:
    """The chat's turns, oldest first, each rebuilt from its run's events."""
    runs, cursor = [], None
    while True:
        page = store.list_runs(parent_id=chat_id, kind="agent", limit=200, cursor=cursor)
        runs.extend(page.items)
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    return [load_turn(store, run, number) for number, run in enumerate(sorted(runs, key=lambda r: r.id), 1)]


def load_turn(store: "Store", run: "Run", number: int) -> TurnRecord:
    """One turn (its run) rebuilt from its events."""
    turn = TurnRecord(run.id, number, run.params.get("task", run.title or ""), run.params.get("graph", "analysis"),
                      run.status, error=run.error)
    cells: dict[int, CellRecord] = {}
    for event in store.events(run.id):
        payload = event.payload
        if event.type == "agent_cell":
            cells[payload["cell"]] = payload  # type: ignore[assignment]
        elif event.type == "agent_plan":
            turn.plan = payload.get("plan", "")
        elif event.type == "agent_answer":
            turn.answer = payload.get("answer", "")
        elif event.type == "agent_review":
            turn.reviews.append({"verdict": payload.get("verdict"), "findings": payload.get("findings", [])})
    turn.cells = [cells[n] for n in sorted(cells)]
    turn.profile = profile_of(turn.cells)
    return turn


def profile_of(cells: list[CellRecord]) -> str:
    """The datasets' profile a turn's setup printed (as its prompt showed it), or ''."""
    profile = next((c for c in cells if c.get("role") == "setup" and c["cell"] > 0), None)
    if profile is None or profile.get("status") != "ok":
        return ""
    return trim(profile.get("observation", ""), 7000, 1000)[0]


def replay_cells(turns: list[TurnRecord]) -> list[tuple[int, CellRecord]]:
    """(run id, cell) of every cell that ran cleanly, in the order it ran: re-running them rebuilds the kernel."""
    return [(t.run_id, c) for t in turns for c in t.cells if c.get("status") == "ok"]


def _turn_text(turn: TurnRecord, *, outputs: bool) -> str:
    lines = [f"### Turn {turn.number} ({turn.status}): {turn.task}"]
    for cell in turn.cells:
        if cell.get("role") == "setup" or cell.get("status") != "ok":
            continue  # parameters and profile cells: the prompt has the profile; failed attempts left nothing behind
        lines.append(f"```python\n{cell.get('code', '').strip()}\n```")
        if outputs:
            seen = cell.get("observation", "").split("\n", 1)
            if len(seen) > 1 and seen[1].strip():
                lines.append(trim(seen[1].strip(), _OUTPUT_CHARS * 2 // 3, _OUTPUT_CHARS // 3)[0])
    if turn.answer:
        lines.append(f"Answer: {turn.answer.strip()}")
    elif turn.error:
        lines.append(f"(no answer: {turn.error})")
    return "\n".join(lines)


def render_history(turns: list[TurnRecord], budget_tokens: int) -> str:
    """The earlier turns as the next turn's prompt shows them, within ``budget_tokens``.

    The newest turns come whole (code and trimmed outputs); older ones lose their outputs, then
    their place, when the budget runs out; what was left out is said.
    """
    budget = max(0, budget_tokens) * CHARS_PER_TOKEN
    parts: list[str] = []
    used = 0
    for index, turn in enumerate(reversed(turns)):
        for text in (_turn_text(turn, outputs=True), _turn_text(turn, outputs=False)):
            if used + len(text) <= budget:
                parts.append(text)
                used += len(text)
                break
        else:
            left = len(turns) - index
            parts.append(f"[{left} earlier turn(s) left out: chat_history_tokens is {budget_tokens}]")
            break
    return "\n\n".join(reversed(parts))
