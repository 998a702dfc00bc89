"""What a graph carries from node to node, and what LangGraph checkpoints.

Everything here is plain JSON-able data, so a checkpoint can be stored in the
workspace and a killed run resumed from it. Live objects (the LLM client, the
kernel session, the run recorder) are not state: they travel in the run's
``AgentContext`` (see ``graphs/context.py``) and are rebuilt on resume.
"""

from __future__ import annotations

import operator
from typing import Annotated, Any, Literal, NotRequired, TypedDict

__all__ = ["AgentState", "CellRecord", "DatasetRef", "Finding", "Severity", "BLOCKING"]

Severity = Literal["error", "warning", "info"]
BLOCKING: frozenset[str] = frozenset({"error"})  # findings of these severities send the work back for revision


class DatasetRef(TypedDict):
    """One input table: the notebook parameter that names it and where it came from."""

    param: str  # the variable the code uses: data, data_2, ...
    path: str  # as the kernel sees it (relative to the work dir)
    source: str  # the user's path on this machine


class CellRecord(TypedDict, total=False):
    """One cell the agent ran (or a file it wrote), as it goes into the run's notebook."""

    cell: int  # index in the run (the store's cell number)
    kind: Literal["code", "file", "shell"]
    code: str  # what the notebook shows: the code, `%%writefile` + content, or the shell snippet
    status: str  # ok / error / timeout / died
    outputs: list[dict[str, Any]]  # nbformat outputs, secrets scrubbed
    execution_count: int | None
    artifacts: list[dict[str, Any]]  # {id, name, kind} of what the cell produced
    observation: str  # what the model was told
    role: str  # which agent ran it: analyst, coder, setup


class Finding(TypedDict):
    """One reviewer finding; ``cell`` is None when it concerns the answer as a whole."""

    severity: Severity
    cell: int | None
    reason: str
    fix: str
    source: NotRequired[str]  # "grounding" when the grounding check made it (graphs/grounding.py)


class AgentState(TypedDict, total=False):
    """The state of the analysis, coding and team graphs."""

    task: str
    conversation: str  # a chat's earlier turns (tasks, code, trimmed outputs, answers), as the prompt shows them
    datasets: list[DatasetRef]
    profile: str  # the datasets' profile as the prompt shows it (never the raw table)
    plan: str
    messages: Annotated[list[dict[str, Any]], operator.add]  # OpenAI-shaped history of the acting agent
    cells: Annotated[list[CellRecord], operator.add]
    answer: str
    findings: list[Finding]
    reviews: Annotated[list[dict[str, Any]], operator.add]  # each review: verdict + findings
    revisions: int
    steps: int  # model turns of the acting agent
    started_at: float  # epoch seconds, so wall-time budgets survive a resume
    route: str  # team graph: which agent got the task
    status: Literal["running", "succeeded", "failed", "unverified"]
    error: str
