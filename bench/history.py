"""History benchmark: what IPython's in-memory history costs per cell against no history at all (issue 17).

dsagent's local kernels used to start with ``--HistoryManager.enabled=False``;
they now get ``--HistoryManager.hist_file=:memory:``, as nbclient (papermill's
own engine) starts its kernels, so ``%history``, ``In`` and the history
manager behave alike under both engines. This times ``execute("1+1")`` and a
ten-line cell on two local sessions, one launched each way, samples
interleaved, and prints ONE JSON object (progress on stderr).

    .venv/bin/python bench/history.py
    .venv/bin/python bench/history.py --quick      # smoke run (tests/bench runs this)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=300, help="timed cells per variant and cell (default 300)")
    parser.add_argument("--quick", action="store_true", help="a few samples: checks that the bench runs")
    args = parser.parse_args(argv)
    rounds, warmup = (10, 2) if args.quick else (args.repeat, 20)
    report = asyncio.run(measure(rounds, warmup))
    print(json.dumps({"rounds": rounds, "cells": report, "target": "reported, no target (issue 17 asks for the figure)"}, indent=1))


if __name__ == "__main__":
    main()
