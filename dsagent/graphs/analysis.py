"""The analysis agent: profile the data, plan, act in the kernel, get reviewed, revise or finish.

::

    START -> setup -> plan -> act <-> tools
                               |
                               v  (an answer without tool calls)
                             review -> act (revise: blocking findings, revisions left)
                               |
                               v
                             finish -> END          (any budget exhausted: finish as failed)

``setup`` runs the parameters cell (one variable per dataset) and a profile
cell in the kernel; the model sees the profile (shape, dtypes, nulls, head,
describe), never the raw table.
"""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Any

from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime
from langgraph.types import interrupt

from dsagent.graphs.context import AgentContext
from dsagent.graphs.export import parameters_code
from dsagent.graphs.llm import ToolCall, tool_message
from dsagent.graphs.plans import PLAN_FORMAT, PLAN_MAX_TOKENS, PLAN_SCHEMA, parse_plan
from dsagent.graphs.review import review_work
from dsagent.graphs.specs import SPECS, AgentSpec
from dsagent.graphs.state import AgentState
from dsagent.graphs.tools import trim

__all__ = ["build_agent_graph", "build_analysis_graph", "profile_code", "spec_of"]

NEEDS_APPROVAL = frozenset({"run_code", "shell", "write_file"})  # with --approve: what runs code or changes files
EDITABLE = {"run_code": "code", "shell": "command", "write_file": "content"}  # what an approver's Edit replaces
PROFILE_CHARS = 8_000

_LOADER = '''import pandas as pd


def load_table(path):
    """Read a table by its extension (csv, tsv, parquet, xlsx, json)."""
    lower = str(path).lower()
    if lower.endswith((".parquet", ".pq")):
        return pd.read_parquet(path)
    if lower.endswith((".xlsx", ".xls")):
        return pd.read_excel(path)
    if lower.endswith((".json", ".jsonl")):
        return pd.read_json(path, lines=lower.endswith(".jsonl"))
    if lower.endswith((".tsv", ".tab")):
        return pd.read_csv(path, sep="\\t")
    return pd.read_csv(path)
'''


def profile_code(params: list[str]) -> str:
    """A cell that loads each dataset and prints its profile."""
    names = ", ".join(params)
    return _LOADER + f'''

for _name, _path in [{", ".join(f"({p!r}, {p})" for p in params)}]:
    _df = load_table(_path)
    print(f"== {{_name}} = {{_path!r}}: {{_df.shape[0]}} rows x {{_df.shape[1]}} columns")
    print(pd.DataFrame({{"dtype": _df.dtypes.astype(str), "nulls": _df.isna().sum()}}).to_string())
    print("-- head"); print(_df.head(5).to_string())
    print("-- describe"); print(_df.describe(include="all").T.to_string(max_rows=40))
del _name, _path, _df  # the tables are loaded again by the analysis: {names}
'''


async def setup(state: AgentState, runtime: Runtime[AgentContext]) -> dict[str, Any]:
    ctx = runtime.context
    datasets = state.get("datasets", [])
    cells = [await ctx.toolbox.run_cell(parameters_code(datasets, state["task"], use_source=False), role="setup")]
    profile = state.get("profile") or "(no datasets given)"  # a chat's follow-up turn brings the first turn's
    if datasets and spec_of(state).wants_data_profile and not state.get("profile"):
        cells.append(await ctx.toolbox.run_cell(profile_code([d["param"] for d in datasets]), role="setup"))
        profile = trim(cells[-1]["observation"], PROFILE_CHARS - 1000, 1000)[0]
    # rides with the plan's write (its cells are written already): one store write fewer before the first plan shows
    await ctx.step("profile", {"datasets": [d["source"] for d in datasets], "status": cells[-1]["status"]}, defer=True)
    return {"cells": cells, "profile": profile, "started_at": state.get("started_at") or time.time(), "steps": 0,
            "revisions": 0, "status": "running"}


async def plan(state: AgentState, runtime: Runtime[AgentContext]) -> dict[str, Any]:
    ctx = runtime.context
    reason = ctx.budget.exceeded(state, ctx.llm.usage.total.total_tokens, ctx.started_at)
    if reason:
        return {"status": "failed", "error": reason}
    spec = spec_of(state)
    messages = [{"role": "system", "content": spec.planner_system}, {"role": "user", "content": briefing(state)}]
    relay = ctx.token_relay(spec.actor)
    for attempt in range(2):  # fail closed: a plan that cannot be read twice ends the run
        reply = await ctx.llm.chat(messages, role=spec.role, on_event=ctx.on_llm_event, on_token=relay,
                                   schema=("plan", PLAN_SCHEMA), max_tokens=PLAN_MAX_TOKENS)
        await relay.flush()
        try:
            steps = parse_plan(reply.text)
            break
        except ValueError as exc:
            if attempt == 1:
                error = f"the planner's reply could not be read twice ({exc}); the run stops instead of guessing a plan"
                await ctx.step("plan", {"role": spec.actor, "plan": reply.text, "error": error})
                return {"status": "failed", "error": error}
            messages += [{"role": "assistant", "content": reply.text},
                         {"role": "user", "content": f"That plan is not usable: {exc}. {PLAN_FORMAT}"}]
    text = "\n".join(f"{n}. {step}" for n, step in enumerate(steps, 1))
    await ctx.step("plan", {"role": spec.actor, "plan": text})
    variables = ", ".join(f"`{d['param']}`" for d in state.get("datasets", [])) or "(none: no datasets)"
    history = [
        {"role": "system", "content": spec.actor_system.format(variables=variables)},
        {"role": "user", "content": f"{briefing(state)}\n\nPlan:\n{text}"},
    ]
    return {"plan": text, "messages": history}


def briefing(state: AgentState) -> str:
    """What the planner and the acting agent are told first: a chat's earlier turns, the task, the datasets."""
    text = f"Task: {state['task']}\n\nDatasets:\n{state.get('profile', '')}"
    if state.get("conversation"):
        text = ("Earlier turns of this conversation (same kernel: their variables still exist, do not reload the data "
                f"unless you must):\n{state['conversation']}\n\nNow the new {text}")
    return text


async def act(state: AgentState, runtime: Runtime[AgentContext]) -> dict[str, Any]:
    ctx = runtime.context
    reason = ctx.budget.exceeded(state, ctx.llm.usage.total.total_tokens, ctx.started_at)
    if reason:
        return {"status": "failed", "error": reason}
    spec = spec_of(state)
    relay = ctx.token_relay(spec.actor)
    reply = await ctx.llm.chat(state["messages"], role=spec.role, tools=ctx.toolbox.specs(), on_event=ctx.on_llm_event,
                               on_token=relay)
    await relay.flush()
    update: dict[str, Any] = {"messages": [reply.assistant_message()], "steps": state.get("steps", 0) + 1}
    if not reply.tool_calls:
        update["answer"] = reply.text
        await ctx.step("answer", {"role": spec.actor, "answer": reply.text})
    else:
        await ctx.step("act", {"role": spec.actor, "step": update["steps"], "tools": [c.name for c in reply.tool_calls],
                               "thought": reply.text[:500]}, defer=True)
    return update


async def tools(state: AgentState, runtime: Runtime[AgentContext]) -> dict[str, Any]:
    """Run the model's tool calls. With approval on, each call that runs code or writes waits for a
    yes (a LangGraph interrupt); the node then runs again from the top, so numbering restarts where the
    state ends and cells already finished are taken from the toolbox's record."""
    ctx = runtime.context
    ctx.toolbox.rewind(max((c["cell"] for c in state.get("cells", [])), default=-1) + 1)
    last = state["messages"][-1]
    messages, cells = [], []
    for raw in last.get("tool_calls", []):
        call = ToolCall.parse(raw["id"], raw["function"]["name"], raw["function"]["arguments"] or "")
        call, refusal, edited = await _approval(ctx, call)
        if refusal is not None:
            messages.append(tool_message(call.id, refusal))
            continue
        result = await ctx.toolbox.call(call, role=spec_of(state).actor)
        note = f"note: the user edited this call before it ran; what ran was:\n{edited}\n\n" if edited is not None else ""
        messages.append(tool_message(call.id, note + result.observation))
        cells.extend(result.cells)
    return {"messages": messages, "cells": cells}


async def _approval(ctx: AgentContext, call: ToolCall) -> tuple[ToolCall, str | None, str | None]:
    """(the call to run, None or what the model is told instead, the edited text or None).

    The approver answers True/False, ``{"approved": bool, "reason"}``, or ``{"action": "run" | "edit" |
    "reject", "code": <edited text>, "reason"}``: an edit replaces the call's code (command, file content),
    so the edited code is what runs and is recorded."""
    if not ctx.approve or call.name not in NEEDS_APPROVAL or not call.ok:
        return call, None, None
    decision = interrupt({"tool": call.name, "arguments": ctx.scrubber.value(call.arguments or {})})
    action, reason, edited = _decision(decision)
    if action == "edit" and (edited is None or edited == (call.arguments or {}).get(EDITABLE[call.name])):
        action, edited = "run", None  # an edit that changes nothing is a plain yes
    await ctx.step("approval", {"tool": call.name, "approved": action != "reject", "action": action, "reason": reason,
                                "edited": edited})
    if action == "reject":
        return call, (f"the user did not allow this {call.name} call" + (f": {reason}" if reason else "")
                      + "; do something else or answer"), None
    if action == "edit":
        arguments = {**(call.arguments or {}), EDITABLE[call.name]: edited}
        call = dataclasses.replace(call, arguments=arguments, raw_arguments=json.dumps(arguments))
    return call, None, edited


def _decision(decision: Any) -> tuple[str, str, str | None]:
    """An approver's answer as (run | edit | reject, reason, edited text)."""
    if not isinstance(decision, dict):
        return ("run" if decision else "reject"), "", None
    reason = str(decision.get("reason") or "")
    action = decision.get("action")
    if action not in ("run", "edit", "reject"):
        action = "run" if decision.get("approved") else "reject"
    edited = decision.get("code")
    return action, reason, edited if isinstance(edited, str) else None


async def review(state: AgentState, runtime: Runtime[AgentContext]) -> dict[str, Any]:
    ctx = runtime.context
    spec = spec_of(state)
    result = await review_work(ctx, state["task"], state.get("cells", []), state.get("answer", ""), extra_checks=spec.checks,
                               earlier=state.get("conversation", ""), profile=state.get("profile", ""),
                               needs_analysis=spec.wants_data_profile and bool(state.get("datasets")))
    await ctx.step("review", {"role": "reviewer", "verdict": result["verdict"], "findings": result["findings"],
                              "grounded": result["grounded"]})
    update: dict[str, Any] = {"reviews": [result], "findings": result["findings"]}
    if result["verdict"] == "revise":
        revisions = state.get("revisions", 0)
        if revisions >= ctx.budget.max_revisions:
            problems = "; ".join(f["reason"] for f in result["findings"] if f["severity"] == "error")
            if not result["grounded"]:  # an answer the run does not support is never called verified
                update.update(status="unverified", error=f"the answer is not grounded in the run's outputs after {revisions} "
                                                         f"revision(s) (agent_max_revisions): {problems}")
            else:
                update.update(status="failed", error=f"the reviewer still found problems after {revisions} revision(s) "
                                                     f"(agent_max_revisions): {problems}")
            return update
        listed = "\n".join(f"- [{f['severity']}] {'cell ' + str(f['cell']) if f['cell'] is not None else 'answer'}: "
                           f"{f['reason']}" + (f" (fix: {f['fix']})" if f["fix"] else "") for f in result["findings"])
        update["messages"] = [{"role": "user", "content": f"A reviewer checked your work and found problems:\n{listed}\n"
                                                          "Fix them, then answer again."}]
        update["revisions"] = revisions + 1
        await ctx.step("revise", {"role": spec.actor, "revision": revisions + 1})
    return update


async def finish(state: AgentState, runtime: Runtime[AgentContext]) -> dict[str, Any]:
    ctx = runtime.context
    status = state.get("status") if state.get("status") in ("failed", "unverified") else "succeeded"
    await ctx.step("finish", {"status": status, "error": state.get("error"), "steps": state.get("steps", 0)})
    return {"status": status}


def _after_act(state: AgentState) -> str:
    if state.get("status") in ("failed", "unverified"):
        return "finish"
    last = state["messages"][-1]
    return "tools" if last.get("tool_calls") else "review"


def _after_review(state: AgentState) -> str:
    return "act" if state.get("status") == "running" and state["reviews"][-1]["verdict"] == "revise" else "finish"


def _after_plan(state: AgentState) -> str:
    return "finish" if state.get("status") == "failed" else "act"


def spec_of(state: AgentState) -> AgentSpec:
    """The spec of the agent doing the work: the state's route (set by the graph, or the team's router)."""
    return SPECS[state.get("route") or "analysis"]


def add_agent_nodes(graph: StateGraph, entry: str) -> None:
    """The shared nodes and edges: ``entry`` -> setup -> plan -> act <-> tools -> review -> finish."""
    for node in (setup, plan, act, tools, review, finish):
        graph.add_node(node.__name__, node)
    graph.add_edge(entry, "setup")
    graph.add_edge("setup", "plan")
    graph.add_conditional_edges("plan", _after_plan, ["act", "finish"])
    graph.add_conditional_edges("act", _after_act, ["tools", "review", "finish"])
    graph.add_edge("tools", "act")
    graph.add_conditional_edges("review", _after_review, ["act", "finish"])
    graph.add_edge("finish", END)


def build_agent_graph(route: str, checkpointer: Any = None):
    """A compiled single-agent graph (``analysis`` or ``coding``); invoke it with ``context=AgentContext(...)``."""
    if route not in SPECS:
        raise ValueError(f"no agent {route!r}; known: {', '.join(SPECS)}")

    async def start(state: AgentState) -> dict[str, Any]:
        return {"route": route}

    graph = StateGraph(AgentState, context_schema=AgentContext)
    graph.add_node("start", start)
    graph.add_edge(START, "start")
    add_agent_nodes(graph, "start")
    return graph.compile(checkpointer=checkpointer)


def build_analysis_graph(checkpointer: Any = None):
    """The analysis agent (see the module docstring)."""
    return build_agent_graph("analysis", checkpointer)
