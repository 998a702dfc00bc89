"""Zero-argument graph factories for LangGraph's own tooling (``langgraph.json`` at the repo root).

LangGraph Studio / ``langgraph dev`` load and draw these. Running one needs an
``AgentContext`` (model client, kernel session, run recorder) as the runtime
context, which ``dsagent ask``/``code`` build; a bare LangGraph server cannot.
"""

from __future__ import annotations

from typing import Any

__all__ = ["analysis", "coding", "review", "team"]


def analysis() -> Any:
    from dsagent.graphs.analysis import build_agent_graph

    return build_agent_graph("analysis")


def coding() -> Any:
    from dsagent.graphs.analysis import build_agent_graph

    return build_agent_graph("coding")


def team() -> Any:
    from dsagent.graphs.team import build_team_graph

    return build_team_graph()


def review() -> Any:
    from dsagent.graphs.review import build_review_graph

    return build_review_graph()
