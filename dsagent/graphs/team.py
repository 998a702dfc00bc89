"""The team: a router gives the task to the analyst or the coder, then the reviewer checks the work.

::

    START -> route -> setup -> plan -> act <-> tools -> review -> act (revise) | finish -> END

The router is the planner model answering JSON (``{"route": "analysis"|"coding",
"reason": ...}``); if its reply cannot be read, data files mean analysis and
no data means coding. The delegation is an event (``agent_delegate``), and every
later event names who acts (analyst, coder, reviewer), so a follower sees the
team at work.
"""

from __future__ import annotations

import json
import re
from typing import Any

from langgraph.graph import START, StateGraph
from langgraph.runtime import Runtime

from dsagent.graphs.analysis import add_agent_nodes
from dsagent.graphs.context import AgentContext
from dsagent.graphs.specs import SPECS
from dsagent.graphs.state import AgentState

__all__ = ["ROUTER_SYSTEM", "build_team_graph", "parse_route"]

ROUTE_SCHEMA = {
    "type": "object",
    "properties": {"route": {"type": "string", "enum": list(SPECS)}, "reason": {"type": "string"}},
    "required": ["route", "reason"],
}
ROUTER_SYSTEM = """You lead a small data team: an analyst (answers questions about data with pandas and plots) and a \
coder (writes and tests Python code). Decide who takes the task. Reply with JSON only: \
{"route": "analysis" or "coding", "reason": "one sentence"}"""


def parse_route(text: str) -> tuple[str, str] | None:
    match = re.search(r"\{.*\}", text, re.DOTALL)
    if not match:
        return None
    try:
        data = json.loads(match.group(0))
    except json.JSONDecodeError:
        return None
    route = data.get("route") if isinstance(data, dict) else None
    return (route, str(data.get("reason", ""))) if route in SPECS else None


async def route(state: AgentState, runtime: Runtime[AgentContext]) -> dict[str, Any]:
    ctx = runtime.context
    datasets = state.get("datasets", [])
    files = ", ".join(d["path"] for d in datasets) or "none"
    reply = await ctx.llm.chat([{"role": "system", "content": ROUTER_SYSTEM},
                                {"role": "user", "content": f"Task: {state['task']}\nData files: {files}"}],
                               role="planner", on_event=ctx.on_llm_event, schema=("route", ROUTE_SCHEMA))
    parsed = parse_route(reply.text)
    if parsed is None:
        chosen, reason = ("analysis", "data files were given") if datasets else ("coding", "no data files were given")
        reason = f"the router's reply could not be read; {reason}"
    else:
        chosen, reason = parsed
    await ctx.step("delegate", {"role": "lead", "to": SPECS[chosen].actor, "route": chosen, "reason": reason})
    return {"route": chosen}


def build_team_graph(checkpointer: Any = None):
    """The compiled team graph; invoke it with ``context=AgentContext(...)``."""
    graph = StateGraph(AgentState, context_schema=AgentContext)
    graph.add_node("route", route)
    graph.add_edge(START, "route")
    add_agent_nodes(graph, "route")
    return graph.compile(checkpointer=checkpointer)
