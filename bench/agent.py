"""Agent benchmark: what the graph costs per step, beyond the model's and the kernel's own time.

Prints ONE JSON object to stdout (progress goes to stderr). The scripted
OpenAI-compatible server answers instantly; each step is one ``run_code`` of
a trivial cell on a warm ``local`` kernel. Two ways, in the same process:

* ``plain_loop``: the ``openai`` SDK and ``session.execute`` in a bare loop
  (no graph, no store, no capture): the floor;
* ``analysis_graph``: ``execute_agent_run`` with the same script: LangGraph
  with its SQLite checkpoints, the run recorded in DuckDB with events, file
  capture after every cell, the review and the exported notebook.

Overhead = wall time minus the time inside model calls and kernel executions.
``overhead_ms_per_step``: over the act <-> tools loop (end of planning to the
answer), per step; ``fixed_overhead_ms_per_run``: the rest of the run (session
start/shutdown, store, profile, review, notebook export). After a warm-up run.
Target for the graph: <= 20 ms per step.

``prompt_tokens_by_step``: what each model call of one data question sends
(plan, each act turn, the review), in tokens (safe-side estimate, 3 characters
a token, as ``llm_context_tokens`` counts them), for a 2,000-row table of 12
columns, so a small-context model's budget can be judged (``fits_2k``/``fits_8k``).

    .venv/bin/python bench/agent.py              # 20 steps, 3 samples
    .venv/bin/python bench/agent.py --quick      # 3 steps, 1 sample (tests/bench runs this)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from typing import Any

TARGET_MS_PER_STEP = 20.0


class Timers:
    """Wall time spent inside model calls and kernel executions, by wrapping the two methods."""

    def __init__(self) -> None:
        self.llm = 0.0
        self.kernel = 0.0

    def wrap(self, owner: Any, name: str, bucket: str) -> None:
        original = getattr(owner, name)
        timers = self

        async def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return await original(*args, **kwargs)
            finally:
                setattr(timers, bucket, getattr(timers, bucket) + time.perf_counter() - start)

        setattr(owner, name, timed)


def script(steps: int) -> list[Any]:
    from dsagent.testing.llm_server import Reply, ToolCall

    work = [Reply(tool_calls=[ToolCall("run_code", {"code": f"x = {i}"})]) for i in range(steps)]
    return [Reply("1. count"), *work, Reply("Done."), Reply('{"verdict": "accept", "findings": []}', role="reviewer")]


async def plain_loop(steps: int, base_url: str, backend: Any) -> tuple[float, Timers]:
    import openai

    timers = Timers()
    client = openai.AsyncOpenAI(base_url=base_url, api_key="bench", max_retries=0)
    tools = [{"type": "function", "function": {"name": "run_code", "parameters": {"type": "object", "properties": {"code": {"type": "string"}}}}}]
    session = await backend.start_session()
    messages: list[dict[str, Any]] = [{"role": "user", "content": "count"}]
    start = time.perf_counter()
    for _ in range(steps + 1):
        t = time.perf_counter()
        reply = await client.chat.completions.create(model="scripted-model", messages=messages, tools=tools)
        timers.llm += time.perf_counter() - t
        message = reply.choices[0].message
        messages.append(message.model_dump(exclude_none=True))
        for call in message.tool_calls or []:
            t = time.perf_counter()
            result = await session.execute(json.loads(call.function.arguments)["code"], timeout=30)
            timers.kernel += time.perf_counter() - t
            messages.append({"role": "tool", "tool_call_id": call.id, "content": result.status})
    wall = time.perf_counter() - start
    await session.shutdown()
    await client.close()
    return wall, timers


async def graph_run(steps: int, base_url: str, backend: Any, settings: Any) -> tuple[float, float]:
    """(overhead seconds of the act/tools loop, overhead seconds of the rest of the run)."""
    from dsagent.graphs.llm import LLMClient
    from dsagent.graphs.runner import execute_agent_run
    from dsagent.kernel_gateway.local import LocalSession

    timers = Timers()
    marks: dict[str, tuple[float, float, float]] = {}

    def on_step(kind: str, payload: dict[str, Any]) -> None:
        if kind in ("plan", "answer"):  # the loop runs from the end of planning to the answer
            marks[kind] = (time.perf_counter(), timers.llm, timers.kernel)

    original_chat, original_execute = LLMClient.chat, LocalSession.execute
    timers.wrap(LLMClient, "chat", "llm")
    timers.wrap(LocalSession, "execute", "kernel")
    try:
        start = time.perf_counter()
        outcome = await execute_agent_run("count", [], backend=backend, settings=settings.replace(llm_base_url=base_url),
                                          on_step=on_step)
        wall = time.perf_counter() - start
    finally:
        LLMClient.chat, LocalSession.execute = original_chat, original_execute
    if outcome.run.status != "succeeded":
        raise SystemExit(f"the agent run failed: {outcome.run.error}")
    (t0, l0, k0), (t1, l1, k1) = marks["plan"], marks["answer"]
    loop = (t1 - t0) - (l1 - l0) - (k1 - k0)
    return loop, (wall - timers.llm - timers.kernel) - loop


def _wide_table(path: str) -> None:
    """2,000 rows x 12 columns: numbers, dates and categories, as a real question's data looks."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(7)
    n = 2000
    frame = pd.DataFrame({
        "date": pd.date_range("2024-01-01", periods=n, freq="h").astype(str),
        "region": rng.choice(["North", "South", "East", "West"], n), "product": rng.choice([f"P{i}" for i in range(30)], n),
        "channel": rng.choice(["web", "store", "partner"], n), **{f"m{i}": rng.normal(100, 20, n).round(2) for i in range(6)},
        "units": rng.integers(1, 50, n), "returned": rng.random(n) < 0.05,
    })
    frame.to_csv(path, index=False)


async def prompt_sizes(settings: Any, backend: Any) -> dict[str, Any]:
    """Tokens of each prompt one data question sends (see the module docstring)."""
    from dsagent.graphs.llm import prompt_tokens
    from dsagent.graphs.runner import execute_agent_run
    from dsagent.testing.llm_server import LLMServer, Reply, ToolCall

    data = os.path.join(settings.home, "sales.csv")
    _wide_table(data)
    steps = [Reply("1. Sum m0 by region\n2. Answer"),
             Reply(tool_calls=[ToolCall("run_code", {"code": "df = load_table(data)\nprint(df.groupby('region')['m0'].sum())"})]),
             Reply(tool_calls=[ToolCall("run_code", {"code": "print(df.describe().T)"})]),
             Reply("The sums are in the output above."), Reply('{"verdict": "accept", "findings": []}', role="reviewer")]
    with LLMServer(steps) as llm:
        await execute_agent_run("Which region has the most m0?", [data], backend=backend,
                                settings=settings.replace(llm_base_url=llm.base_url))
        requests = list(llm.requests)
    sizes: dict[str, int] = {}
    acts = 0
    for request in requests:
        if request.role == "reviewer":
            name = "review"
        elif request.tools:
            acts += 1
            name = f"act {acts}"
        else:
            name = "plan"
        sizes[name] = prompt_tokens(request.messages, request.tools)
    largest = max(sizes.values())
    return {"table": "2000 rows x 12 columns", "tokens": sizes, "largest": largest,
            "fits_2k": largest + 512 <= 2048, "fits_8k": largest + 2048 <= 8192,
            "note": "fits_*: the prompt plus the reply room llm_context_tokens keeps (a quarter of the window)"}


async def main(steps: int, samples: int) -> dict[str, Any]:
    from dsagent.kernel_gateway.local import LocalBackend
    from dsagent.settings import Settings
    from dsagent.testing.llm_server import LLMServer

    home = tempfile.mkdtemp(prefix="dsagent-bench-agent-")
    os.environ["OPENAI_API_KEY"] = "bench-key"
    settings = Settings(home=home, llm_model="scripted-model", agent_max_steps=steps + 5, kernel_pool_replenish_delay=0)
    rows: dict[str, list[dict[str, float]]] = {"plain_loop": [], "analysis_graph": []}

    async def once(name: str, n: int, backend: Any) -> tuple[float, float]:
        with LLMServer(script(n)) as llm:
            if name == "plain_loop":
                wall, timers = await plain_loop(n, llm.base_url, backend)
                result = (wall - timers.llm - timers.kernel, 0.0)
            else:
                result = await graph_run(n, llm.base_url, backend, settings)
        await backend.warm()
        return result

    async with LocalBackend(settings, pool_size=1) as backend:
        await backend.warm()
        for name in rows:  # warm-up: first imports and first connections are not per-step costs
            await once(name, 1, backend)
        for sample in range(samples):
            for name, bucket in rows.items():
                loop, rest = await once(name, steps, backend)
                bucket.append({"overhead_ms_per_step": loop / steps * 1000, "fixed_overhead_ms_per_run": rest * 1000})
                print(f"sample {sample + 1}/{samples} {name}: {loop / steps * 1000:.1f} ms/step + {rest * 1000:.0f} ms/run",
                      file=sys.stderr)
        prompts = await prompt_sizes(settings, backend)

    def median(rows_: list[dict[str, float]]) -> dict[str, float]:
        return {key: round(statistics.median(r[key] for r in rows_), 2) for key in rows_[0]}

    plain, graph = median(rows["plain_loop"]), median(rows["analysis_graph"])
    return {
        "benchmark": "agent",
        "steps": steps,
        "samples": samples,
        "plain_loop": plain,
        "analysis_graph": graph,
        "graph_minus_plain_ms_per_step": round(graph["overhead_ms_per_step"] - plain["overhead_ms_per_step"], 2),
        "target_ms_per_step": TARGET_MS_PER_STEP,
        "meets_target": graph["overhead_ms_per_step"] <= TARGET_MS_PER_STEP,
        "prompt_tokens_by_step": prompts,
        "method": "overhead = wall time outside model calls and kernel executions; per step: over the act<->tools loop "
                  "(end of planning to the answer) divided by the steps; fixed: the rest of the run (session start and "
                  "shutdown, store, profile, review, notebook export)",
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--samples", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="3 steps, 1 sample")
    args = parser.parse_args()
    steps, samples = (3, 1) if args.quick else (args.steps, args.samples)
    print(json.dumps(asyncio.run(main(steps, samples)), indent=2))
