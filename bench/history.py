"""History benchmark: what IPython's in-memory history costs per cell against no history at all (issue 17).

dsagent's local kernels used to start with ``--HistoryManager.enabled=False``;
they now get ``--HistoryManager.hist_file=:memory:``, as nbclient (papermill's
own engine) starts its kernels, so ``%history``, ``In`` and the history
manager behave alike under both engines. This times ``execute("1+1")`` and a
ten-line cell on two local sessions, one launched each way, samples
interleaved, and prints ONE JSON object (progress on stderr). Round trips on a
busy machine are mostly scheduling noise, so it also counts the CPU time an
IPython shell spends per cell in-process (history thread included), each
variant in its own process: that figure holds up under load.

    .venv/bin/python bench/history.py
    .venv/bin/python bench/history.py --quick      # smoke run (tests/bench runs this)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from typing import Any

import dsagent.kernel_gateway.local as local
from dsagent.kernel_gateway.local import LocalBackend
from dsagent.settings import Settings

VARIANTS = {
    "history_disabled": "--HistoryManager.enabled=False",  # before issue 17
    "history_in_memory": "--HistoryManager.hist_file=:memory:",  # now, as nbclient
}
CELLS = {"1+1": "1+1", "ten_lines": "\n".join(f"v{i} = {i} * 2" for i in range(10))}


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


async def start(flag: str, settings: Settings) -> tuple[LocalBackend, Any]:
    """A local session whose kernel got ``flag`` instead of the history option of ``IPYKERNEL_ARGUMENTS``."""
    others = tuple(a for a in local.IPYKERNEL_ARGUMENTS if not a.startswith("--HistoryManager."))
    saved, local.IPYKERNEL_ARGUMENTS = local.IPYKERNEL_ARGUMENTS, (flag, *others)
    try:
        backend = LocalBackend(settings, pool_size=0)
        session = await backend.start_session()
    finally:
        local.IPYKERNEL_ARGUMENTS = saved
    check = await session.execute("str(get_ipython().history_manager.enabled) + ' ' + str(get_ipython().history_manager.hist_file)")
    progress(f"{flag}: kernel reports {check.result}")
    return backend, session


async def measure(rounds: int, warmup: int) -> dict[str, Any]:
    settings = Settings()
    started = {name: await start(flag, settings) for name, flag in VARIANTS.items()}
    samples: dict[str, dict[str, list[float]]] = {cell: {name: [] for name in VARIANTS} for cell in CELLS}
    try:
        for i in range(warmup + rounds):
            names = list(VARIANTS)
            names = names[i % 2:] + names[: i % 2]  # alternate who goes first
            for cell, code in CELLS.items():
                for name in names:
                    t0 = time.perf_counter()
                    result = await started[name][1].execute(code)
                    elapsed = (time.perf_counter() - t0) * 1000
                    assert result.ok, result.error
                    if i >= warmup:
                        samples[cell][name].append(elapsed)
    finally:
        for backend, session in started.values():
            await session.shutdown()
            await backend.aclose()
    report: dict[str, Any] = {}
    for cell, by_name in samples.items():
        medians = {name: round(statistics.median(s), 3) for name, s in by_name.items()}
        report[cell] = {
            **{f"{name}_median_ms": value for name, value in medians.items()},
            "cost_per_cell_ms": round(medians["history_in_memory"] - medians["history_disabled"], 3),
            "ratio": round(medians["history_in_memory"] / medians["history_disabled"], 3),
        }
        progress(f"{cell}: " + ", ".join(f"{n} {m:.2f} ms" for n, m in medians.items()))
    return report


#: runs in a fresh interpreter: an IPython shell configured with one variant's option, CPU seconds per cell
_CPU_PROBE = """
import json, sys, time
from traitlets.config import Config
from IPython.core.interactiveshell import InteractiveShell
name, value, cells = sys.argv[1], sys.argv[2], int(sys.argv[3])
config = Config()
setattr(config.HistoryManager, name, {"False": False}.get(value, value))
shell = InteractiveShell.instance(config=config)
for _ in range(50):
    shell.run_cell("x = 1 + 1", store_history=True)
cpu, wall = time.process_time(), time.perf_counter()
for _ in range(cells):
    shell.run_cell("x = 1 + 1", store_history=True)
cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
shell.history_manager.end_session()
print(json.dumps({"cpu_us_per_cell": cpu / cells * 1e6, "wall_us_per_cell": wall / cells * 1e6, "enabled": shell.history_manager.enabled}))
"""


def measure_shell_cpu(cells: int) -> dict[str, Any]:
    """CPU microseconds per cell of an in-process IPython shell, per variant (median of three processes)."""
    report: dict[str, Any] = {}
    for variant, flag in VARIANTS.items():
        name, value = flag.removeprefix("--HistoryManager.").split("=", 1)
        runs = []
        for _ in range(3):
            done = subprocess.run([sys.executable, "-c", _CPU_PROBE, name, value, str(cells)], capture_output=True, text=True, check=True)
            runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
        report[f"{variant}_cpu_us_per_cell"] = round(statistics.median(r["cpu_us_per_cell"] for r in runs), 1)
    report["cost_cpu_us_per_cell"] = round(report["history_in_memory_cpu_us_per_cell"] - report["history_disabled_cpu_us_per_cell"], 1)
    progress(f"in-process shell CPU per cell: {report}")
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=300, help="timed cells per variant and cell (default 300)")
    parser.add_argument("--quick", action="store_true", help="a few samples: checks that the bench runs")
    args = parser.parse_args(argv)
    rounds, warmup = (10, 2) if args.quick else (args.repeat, 20)
    report = asyncio.run(measure(rounds, warmup))
    shell = measure_shell_cpu(200 if args.quick else 3000)
    print(json.dumps({"rounds": rounds, "cells": report, "shell_cpu": shell, "target": "reported, no target (issue 17 asks for the figure)"}, indent=1))


if __name__ == "__main__":
    main()
