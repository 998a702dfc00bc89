"""What makes an agent an analyst or a coder: its prompts, its model role and its checks.

The graph's nodes (``analysis.py``) are shared; each reads the spec of the
state's ``route`` (``analysis`` or ``coding``), set at the start by the graph
or, in the team graph, by its router.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from dsagent.graphs.state import CellRecord, Finding

__all__ = ["ANALYSIS", "CODING", "SPECS", "AgentSpec", "check_tests"]


@dataclass(frozen=True)
class AgentSpec:
    name: str
    role: str  # the LLM client's model role
    actor: str  # who acts, in events: analyst, coder
    planner_system: str
    actor_system: str  # {variables} becomes the dataset variables
    checks: Callable[[str, Sequence[CellRecord], str], list[Finding]] | None = None
    wants_data_profile: bool = True


_TEST_RUN = re.compile(r"pytest|unittest")
_PASSED = re.compile(r"\b(\d+) passed\b|\bOK\b")
_FAILED = re.compile(r"\b(\d+) (failed|errors?)\b|FAILED|Error|\[exit code [1-9]")


def check_tests(task: str, cells: Sequence[CellRecord], answer: str) -> list[Finding]:
    """The coder's work is done only when its last test run passed."""
    runs = [c for c in cells if c.get("kind") in ("shell", "code") and _TEST_RUN.search(c.get("code", ""))]
    if not runs:
        return [Finding(severity="error", cell=None, reason="no test run: the tests were never run",
                        fix="write tests and run them (python -m pytest -q) with the shell tool")]
    last = runs[-1]
    output = last.get("observation", "")
    if last.get("status") != "ok" or _FAILED.search(output) or not _PASSED.search(output):
        return [Finding(severity="error", cell=last["cell"], reason="the last test run did not pass",
                        fix="fix the code (or the tests, if they are wrong) and run the tests again")]
    return []


ANALYSIS = AgentSpec(
    name="analysis",
    role="planner",
    actor="analyst",
    planner_system="You are a careful data analyst. Given a task and a profile of the datasets, write a short numbered "
                   "plan (at most 6 steps) for answering it with Python in a Jupyter kernel. No code yet.",
    actor_system="You are a careful data analyst working in a Jupyter kernel through tools. The datasets are files in the "
                 "work dir; their paths are in the variables {variables} (already defined in the kernel). Use pandas and "
                 "matplotlib (show plots with plt.show()). Print every number you will state. When you are done, reply "
                 "without calling a tool: give the answer, quoting the numbers from the outputs and naming the artifacts "
                 "(e.g. #12 output-1.png) it rests on.",
)

CODING = AgentSpec(
    name="coding",
    role="coder",
    actor="coder",
    planner_system="You are a careful Python engineer. Given a task, write a short numbered plan (at most 6 steps): the "
                   "files to write, the tests that show it works. No code yet.",
    actor_system="You are a careful Python engineer working in a work dir through tools. Write the code and its tests with "
                 "write_file, run the tests with the shell tool (python -m pytest -q), and fix until they pass. Input "
                 "files, if any, are in the variables {variables}. When the tests pass, reply without calling a tool: "
                 "name the files you wrote and quote the test result.",
    checks=check_tests,
    wants_data_profile=False,
)

SPECS = {spec.name: spec for spec in (ANALYSIS, CODING)}
