"""``dsagent demo``: a tour of what works (``dsagent serve`` runs it to fill an empty workspace).

On the embedded defaults (this workspace, sandboxed kernels when the sandbox
can run here): a plot from a warm kernel, a demo notebook run recorded with
its artifacts, and the analysis agent on the demo data with a scripted model
(no LLM is needed; with OPENAI_API_KEY set, `dsagent ask` uses a real one).
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from dsagent.errors import DsagentError

__all__ = ["register"]

PLOT_CELL = """\
import matplotlib.pyplot as plt
import numpy as np
x = np.linspace(0, 4 * np.pi, 400)
fig, ax = plt.subplots(figsize=(6, 3))
ax.plot(x, np.sin(x), label="sin")
ax.plot(x, np.cos(x), label="cos")
ax.set_title("dsagent demo: a plot made in a warm kernel")
ax.legend()
plt.show()
print("mean of sin over [0, 4pi]:", round(float(np.sin(x).mean()), 4))
"""

AGENT_CODE = """\
df = load_table(data)
df["revenue"] = df["quantity"] * df["unit_price"]
by_region = df.groupby("region")["revenue"].sum().sort_values(ascending=False)
print(by_region.round(2).to_string())
by_region.plot.bar(title="revenue by region")
import matplotlib.pyplot as plt
plt.show()
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="a tour: a plot from a warm kernel, a demo notebook run, the agent with a scripted model")
    p.add_argument("--backend", help="kernel backend (default: sandbox if it can run here, else local)")
    p.set_defaults(func=cmd_demo)


def _notebooks_dir() -> Path | None:
    import dsagent

    folder = Path(dsagent.__file__).resolve().parents[1] / "notebooks"
    return folder if (folder / "sales_cohorts.ipynb").is_file() else None


def cmd_demo(args: argparse.Namespace) -> int:
    import asyncio

    from dsagent.kernel_gateway.registry import backend_registry
    from dsagent.settings import Settings
    from dsagent.workspace import Workspace

    settings = Settings()
    workspace = Workspace.from_settings(settings).ensure()
    name = args.backend
    if name is None:
        problem = backend_registry.get("sandbox").check()
        name = "sandbox" if problem is None else "local"
        if problem:
            print(f"(the sandbox cannot run here: {problem}; using local kernels)")
    return asyncio.run(_tour(name, settings, workspace))


async def _tour(name: str, settings, workspace) -> int:
    from dsagent.cli.kernels import OutputPrinter
    from dsagent.kernel_gateway.registry import get_backend

    output_dir = workspace.outputs_dir / time.strftime("demo-%Y%m%d-%H%M%S")
    async with get_backend(name, settings, pool_size=1) as backend:
        t0 = time.perf_counter()
        print(f"1. a warm pool of {name} kernels ...", flush=True)
        await backend.warm()
        print(f"   pool ready in {time.perf_counter() - t0:.2f} s")
        t1 = time.perf_counter()
        async with await backend.start_session() as session:
            first = await session.execute("1 + 1")
            print(f"   session handed out; first result {first.result} after {1000 * (time.perf_counter() - t1):.1f} ms")
            printer = OutputPrinter(output_dir)
            result = await session.execute(PLOT_CELL, on_output=printer)
            if result.status != "ok":
                print(f"   the plotting cell failed: {result.error}")
                return 1
        folder = _notebooks_dir()
        if folder is None:
            print("2. (no demo notebooks next to this install: skipped)")
        else:
            await _notebook(folder / "sales_cohorts.ipynb", backend, settings, output_dir)
            await _agent(folder / "data" / "sales.csv", backend, settings)
    print(f"\ndone. workspace: {workspace.home}")
    print("   browse it: dsagent runs ls · dsagent artifacts ls · dsagent runs events RUN")
    return 0


async def _notebook(path: Path, backend, settings, output_dir: Path) -> None:
    from dsagent.runs.notebook_run import execute_notebook_run

    print(f"2. the demo notebook {path.name} with region=north, on a warm kernel ...", flush=True)
    # a work dir in the workspace with a copy of the data: the notebook's files land there, not in the
    # repository, and a sandboxed kernel (which sees only its work dir) can read the data
    work_dir = output_dir / "notebook-work"
    (work_dir / "data").mkdir(parents=True, exist_ok=True)
    shutil.copy2(path.parent / "data" / "sales.csv", work_dir / "data" / "sales.csv")
    outcome = await execute_notebook_run(path, text_parameters={"region": "north"}, backend=backend, settings=settings, cwd=work_dir)
    run = outcome.run
    if run.status != "succeeded":
        raise DsagentError(f"the demo notebook failed: {run.error}", hint=f"see the executed notebook: {outcome.notebook_path}")
    print(f"   run {run.id} {run.status} in {(run.finished - run.started).total_seconds():.1f} s; "
          f"{len(outcome.artifacts)} artifacts; executed notebook: {outcome.notebook_path}")


async def _agent(data: Path, backend, settings) -> None:
    from dsagent.cli.agents import StepPrinter
    from dsagent.graphs.runner import execute_agent_run
    from dsagent.testing.llm_server import LLMServer, Reply, ToolCall

    print("3. the analysis agent on the sales data, with a scripted model (no LLM needed) ...", flush=True)
    script = [
        Reply("1. Load the orders\n2. Revenue = quantity x unit price, summed per region\n3. Bar chart"),
        Reply(tool_calls=[ToolCall("run_code", {"code": AGENT_CODE})]),
        Reply("Revenue per region is printed above (largest first), with a bar chart as the image artifact."),
        Reply('{"verdict": "accept", "findings": []}', role="reviewer"),
    ]
    with LLMServer(script) as llm:
        agent_settings = settings.replace(llm_base_url=llm.base_url, llm_model="scripted-model")
        outcome = await execute_agent_run("Which region has the most revenue? Plot revenue by region.", [data],
                                          backend=backend, settings=agent_settings, on_step=StepPrinter(__import__("sys").stdout))
    print(f"   run {outcome.run.id} {outcome.run.status}; answer: {outcome.answer}")
    print(f"   its notebook (re-run it with `dsagent run`): {outcome.notebook_path}")
