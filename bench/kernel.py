"""Kernel benchmark: how fast dsagent gets a result out of a kernel, against the targets of issues 3, 7 and 16.

Prints ONE JSON object to stdout (progress goes to stderr). For each measured
backend: cold start to first result, warm-pool handout to first result, the
``1+1`` round trip through a session against a raw ``jupyter_client`` loop in
the same run, and a PNG plot cell. Then ``dsagent --help`` against
``python -c pass``. Samples of different backends and baselines are
interleaved, so a noisy neighbour slows all of them alike. "cold" means a
normal launch (``kernel_fork`` off), as before the fork server; the
``fork_server`` section (issue 16) measures ``local`` kernels forked from the
preloaded template against cold launches measured in the same run; the
``stream_copy`` section (issue 28) a cell printing 10,000 lines on a kernel
that keeps the stream copy against one that does not.

    .venv/bin/python bench/kernel.py                      # every usable backend
    .venv/bin/python bench/kernel.py --backends local,sandbox --repeat 20
    .venv/bin/python bench/kernel.py --quick --backends local   # smoke run
    .venv/bin/python bench/kernel.py --stream-copy-only --repeat 20
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any, Awaitable, Callable

from dsagent.errors import DsagentError
from dsagent.kernel_gateway.base import KernelBackend, KernelSession
from dsagent.kernel_gateway.registry import backend_registry, get_backend
from dsagent.settings import Settings

#: medians on the 2-core reference machine (issue 3 item 6, issue 7 item 1)
TARGET_WARM_HANDOUT_MS = 10.0
TARGET_OVERHEAD_RATIO = 1.15
TARGET_SANDBOX_START_RATIO = 1.3
TARGET_SANDBOX_ROUNDTRIP_RATIO = 1.1
#: issue 16: forked kernels (medians; ratios against a cold launch in the same run)
TARGET_FORK_FIRST_RESULT_MS = 50.0
TARGET_FORK_SPEEDUP = 12.0
TARGET_FORK_FIRST_PLOT_MS = 150.0
TARGET_FORK_100_SEQUENTIAL_S = 5.0
TARGET_FORK_PSS_RATIO = 1 / 3
#: issue 28: a cell printing 10,000 lines, with the stream copy against without it in the same run
TARGET_STREAM_COPY_RATIO = 1.05
PRINT_CELL = "for i in range(10_000):\n    print('line', i)"
#: top-level packages ``dsagent --help`` must not import (issue 3 item 5: the CLI must start fast)
HEAVY_MODULES = (
    "jupyter_client", "jupyter_server", "jupyter_core", "ipykernel", "zmq", "tornado", "panel", "bokeh",
    "langgraph", "langchain_core", "duckdb", "pandas", "numpy", "matplotlib", "openai", "e2b",
    "e2b_code_interpreter", "papermill", "nbformat",
)  # fmt: skip

PLOT_CELL = "import matplotlib.pyplot as plt\nfig, ax = plt.subplots()\nax.plot([0, 1, 4, 9])\nplt.show()\n"
Timer = Callable[[], Awaitable[float]]


@dataclass(frozen=True)
class Plan:
    """How many samples each measurement takes."""

    starts: int  # cold starts and warm handouts per backend
    roundtrips: int  # ``1+1`` round trips per runner (after a warm-up)
    plots: int  # plot cells after the first one
    cli_runs: int
    settle: float  # seconds a refilled pool is left idle before a handout

    @classmethod
    def from_args(cls, repeat: int | None, quick: bool) -> "Plan":
        if quick:
            n = repeat or 1
            return cls(starts=n, roundtrips=10 * n, plots=n, cli_runs=n, settle=0.1)
        n = repeat or 10
        return cls(starts=n, roundtrips=20 * n, plots=n, cli_runs=n, settle=0.5)


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def median_ms(samples: list[float]) -> float:
    return round(statistics.median(samples) * 1000, 3)


def figure(samples: list[float], **extra: Any) -> dict[str, Any]:
    """A timing in ms: median, spread, sample count, and whatever else describes it."""
    return {"median_ms": median_ms(samples), "min_ms": round(min(samples) * 1000, 3), "samples": len(samples), **extra}


def against(value: float, target: float, **extra: Any) -> dict[str, Any]:
    return {"value": round(value, 3), "target": target, "meets_target": value <= target, **extra}


# -- backends ------------------------------------------------------------------


def resolve_backends(requested: list[str] | None) -> tuple[list[str], dict[str, str]]:
    """Backends to measure (all usable ones if none named) and those skipped, with why."""
    names = requested or backend_registry.names()
    usable, skipped = [], {}
    for name in names:
        reason = backend_registry.get(name).check()  # an unknown name raises BackendNotFound
        if reason is None:
            usable.append(name)
        else:
            skipped[name] = reason
    return usable, skipped


async def first_result(backend: KernelBackend) -> tuple[float, float, KernelSession]:
    """Seconds to get a session, and then its first ``1+1``."""
    t0 = time.perf_counter()
    session = await backend.start_session()
    t1 = time.perf_counter()
    execution = await session.execute("1+1")
    t2 = time.perf_counter()
    if execution.result != "2":
        raise RuntimeError(f"1+1 gave {execution.status} {execution.result!r} {execution.error}")
    return t1 - t0, t2 - t1, session


async def measure_cold_starts(names: list[str], settings: Settings, plan: Plan) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {name: [] for name in names}
    for i in range(plan.starts):
        for name in names:
            async with get_backend(name, settings, pool_size=0) as backend:
                start, first, session = await first_result(backend)
                await session.shutdown()
            samples[name].append(start + first)
            progress(f"{name}: cold start {i + 1}/{plan.starts}: {(start + first) * 1000:.0f} ms")
    return samples


async def measure_handouts(names: list[str], settings: Settings, plan: Plan) -> dict[str, dict[str, list[float]]]:
    """Take a kernel from a full, idle pool and run ``1+1``; the pool refills between samples."""
    pool_size = max(1, settings.kernel_pool_size)
    backends = {name: get_backend(name, settings, pool_size=pool_size) for name in names}
    samples = {name: {"total": [], "start_session": [], "first_execute": []} for name in names}
    try:
        for i in range(plan.starts):
            for name, backend in backends.items():
                warm = getattr(backend, "warm", None)  # backends without a pool hand out cold kernels
                if warm is not None:
                    await warm()
                await asyncio.sleep(plan.settle)
                start, first, session = await first_result(backend)
                await session.shutdown()
                for key, value in (("total", start + first), ("start_session", start), ("first_execute", first)):
                    samples[name][key].append(value)
                progress(f"{name}: warm handout {i + 1}/{plan.starts}: {(start + first) * 1000:.1f} ms")
    finally:
        for backend in backends.values():
            await backend.aclose()
    return samples


# -- 1+1 round trips: our sessions against raw jupyter_client -------------------


async def raw_execute(kc: Any, code: str) -> None:
    """jupyter_client's plain request loop: send, read iopub until idle, read the reply."""
    msg_id = kc.execute(code)
    while True:
        msg = await kc.get_iopub_msg()
        if (
            msg["parent_header"].get("msg_id") == msg_id
            and msg["msg_type"] == "status"
            and msg["content"]["execution_state"] == "idle"
        ):
            break
    while True:
        reply = await kc.get_shell_msg()
        if reply["parent_header"].get("msg_id") == msg_id:
            if reply["content"]["status"] != "ok":
                raise RuntimeError(f"raw {code!r} failed: {reply['content']}")
            return


def timer(run: Callable[[], Awaitable[Any]]) -> Timer:
    async def timed() -> float:
        t0 = time.perf_counter()
        await run()
        return time.perf_counter() - t0

    return timed


async def start_stock_kernel(settings: Settings, transport: str, folder: Path) -> Any:
    """A kernel as plain jupyter_client starts it (no dsagent code), over ``transport``."""
    from jupyter_client import AsyncKernelManager

    km = AsyncKernelManager(kernel_name=settings.kernel_name)
    if transport == "ipc":
        km.transport = "ipc"
        km.ip = str(folder / "kernel")  # socket files kernel-1, kernel-2, ... in a private folder
    log = open(folder / f"stock-{transport}.log", "ab")
    await km.start_kernel(cwd=str(folder), stdout=log, stderr=log)
    kc = km.client()
    kc.start_channels()
    await kc.wait_for_ready(timeout=settings.kernel_start_timeout)
    return km, kc, log


async def measure_roundtrips(names: list[str], settings: Settings, plan: Plan, scratch: Path) -> dict[str, list[float]]:
    """Medians of ``1+1`` for every runner, with samples interleaved in rotating order.

    Runners: ``ours:<backend>`` (a session), ``raw_same:<backend>`` (the raw
    loop on a kernel launched exactly as the backend launches its own, so the
    ratio is what our client code costs), ``raw_stock_tcp`` and
    ``raw_stock_ipc`` (the raw loop on a kernel started by plain jupyter_client).
    """
    runners: dict[str, Timer] = {}
    cleanups: list[Callable[[], Awaitable[Any]]] = []
    try:
        for name in names:
            backend = get_backend(name, settings, pool_size=0)
            cleanups.append(backend.aclose)
            session = await backend.start_session()
            cleanups.append(session.shutdown)
            runners[f"ours:{name}"] = timer(lambda s=session: s.execute("1+1"))
            launch = getattr(backend, "_start_kernel", None)
            if launch is not None:  # backends on local kernels: the same launch, our client left out
                kernel = await launch(scratch / f"raw-{name}", None)
                cleanups.append(lambda b=backend, k=kernel: b._stop_kernel(k))
                runners[f"raw_same:{name}"] = timer(lambda kc=kernel.kc: raw_execute(kc, "1+1"))
        for transport in ("tcp", "ipc"):
            folder = Path(tempfile.mkdtemp(prefix=f"stock-{transport}-", dir=scratch))
            km, kc, log = await start_stock_kernel(settings, transport, folder)
            cleanups.append(lambda km=km, kc=kc, log=log: _stop_stock(km, kc, log))
            runners[f"raw_stock_{transport}"] = timer(lambda kc=kc: raw_execute(kc, "1+1"))
        return await interleave(runners, plan.roundtrips, warmup=max(5, plan.roundtrips // 10))
    finally:
        for cleanup in reversed(cleanups):
            await cleanup()


async def _stop_stock(km: Any, kc: Any, log: Any) -> None:
    kc.stop_channels()
    await km.shutdown_kernel(now=True)
    log.close()


async def interleave(runners: dict[str, Timer], rounds: int, warmup: int) -> dict[str, list[float]]:
    names = list(runners)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for i in range(warmup + rounds):
        shift = i % len(names)  # rotate who goes first: no runner always follows the same one
        for name in names[shift:] + names[:shift]:
            elapsed = await runners[name]()
            if i >= warmup:
                samples[name].append(elapsed)
    progress("1+1 round trips: " + ", ".join(f"{n} {median_ms(s):.2f} ms" for n, s in samples.items()))
    return samples


# -- a plot cell ---------------------------------------------------------------


async def measure_plot(name: str, settings: Settings, plan: Plan) -> dict[str, Any]:
    """The first plot cell of a fresh session (imports matplotlib), then the same cell again."""
    timings = []
    async with get_backend(name, settings, pool_size=0) as backend, await backend.start_session() as session:
        for _ in range(1 + plan.plots):
            t0 = time.perf_counter()
            execution = await session.execute(PLOT_CELL)
            timings.append(time.perf_counter() - t0)
            if not any("image/png" in out.get("data", {}) for out in execution.outputs):
                raise RuntimeError(f"the plot cell gave no PNG: {execution.status} {execution.outputs}")
    progress(f"{name}: plot cell first {timings[0] * 1000:.0f} ms, then {median_ms(timings[1:]):.1f} ms")
    return {"first_cell_ms": round(timings[0] * 1000, 3), "repeat": figure(timings[1:])}


# -- the fork server (issue 16) ----------------------------------------------------


async def one_kernel_job(backend: KernelBackend, code: str = "1+1") -> None:
    """What a sweep does per notebook at the least: a fresh kernel, one cell, shutdown."""
    async with await backend.start_session() as session:
        execution = await session.execute(code)
        if execution.status != "ok":
            raise RuntimeError(f"{code!r} gave {execution.status}: {execution.error}")


async def first_plot_ms(backend: KernelBackend) -> float:
    async with await backend.start_session() as session:
        t0 = time.perf_counter()
        execution = await session.execute(PLOT_CELL)
        elapsed = time.perf_counter() - t0
    if not any("image/png" in out.get("data", {}) for out in execution.outputs):
        raise RuntimeError(f"the plot cell gave no PNG: {execution.status} {execution.outputs}")
    return elapsed


async def kernel_pss(backend: KernelBackend, alive: int) -> tuple[list[int], list[int]]:
    """PSS and USS of ``alive`` kernels of ``backend`` running at once, each with the preload list imported."""
    import psutil

    sessions = [await backend.start_session() for _ in range(alive)]
    try:
        for session in sessions:  # a cold kernel imports them here; a forked one has them already
            await session.execute("import numpy, pandas, matplotlib.pyplot")
        infos = [psutil.Process(s.kernel_pid).memory_full_info() for s in sessions if s.kernel_pid]
        return [i.pss for i in infos], [i.uss for i in infos]
    finally:
        for session in sessions:
            await session.shutdown()


async def measure_fork_server(settings: Settings, plan: Plan, cold_first_result: list[float]) -> dict[str, Any]:
    """Fresh forked kernels: first result, first plot, 100 in a row, 20 at once, memory; cold launches alongside."""
    cold_settings = settings.replace(kernel_fork=False)
    async with get_backend("local", settings, pool_size=0) as forked, get_backend("local", cold_settings, pool_size=0) as cold:
        await forked.warm()  # the template starts once (and is then shared); not part of a kernel's start
        await one_kernel_job(forked)
        firsts, plots, cold_plots = [], [], []
        for i in range(plan.starts):
            start, first, session = await first_result(forked)
            await session.shutdown()
            firsts.append(start + first)
            plots.append(await first_plot_ms(forked))
            cold_plots.append(await first_plot_ms(cold))
            progress(f"fork: first result {firsts[-1] * 1000:.0f} ms, first plot {plots[-1] * 1000:.0f} ms (cold {cold_plots[-1] * 1000:.0f} ms)")
        jobs, at_once, alive = (4, 4, 2) if plan.starts <= 2 else (100, 20, 4)  # a smoke run only shows it works
        t0 = time.perf_counter()
        for _ in range(jobs):
            await one_kernel_job(forked)
        sequential = time.perf_counter() - t0
        t0 = time.perf_counter()
        await asyncio.gather(*(one_kernel_job(forked) for _ in range(at_once)))
        concurrent = time.perf_counter() - t0
        progress(f"fork: {jobs} kernels one after another {sequential:.2f} s, {at_once} at once {concurrent:.2f} s")
        (forked_pss, forked_uss), (cold_pss, cold_uss) = await kernel_pss(forked, alive), await kernel_pss(cold, 1)
    speedup = statistics.median(cold_first_result) / statistics.median(firsts)
    pss_ratio = statistics.median(forked_pss) / statistics.median(cold_pss)
    return {
        "preload": settings.kernel_preload,
        "fresh_kernel_to_first_result": figure(
            firsts, target=TARGET_FORK_FIRST_RESULT_MS, meets_target=median_ms(firsts) <= TARGET_FORK_FIRST_RESULT_MS,
            cold_median_ms=median_ms(cold_first_result),
            speedup_vs_cold=against(1 / speedup, round(1 / TARGET_FORK_SPEEDUP, 4), speedup=round(speedup, 2), note="value = forked / cold"),
        ),  # fmt: skip
        "first_plot_cell_in_fresh_kernel": figure(
            plots, target=TARGET_FORK_FIRST_PLOT_MS, meets_target=median_ms(plots) <= TARGET_FORK_FIRST_PLOT_MS,
            cold=figure(cold_plots), speedup_vs_cold=round(statistics.median(cold_plots) / statistics.median(plots), 2),
        ),  # fmt: skip
        "sequential_kernels": against(
            sequential * 100 / jobs, TARGET_FORK_100_SEQUENTIAL_S, unit="s per 100", kernels_run=jobs,
            what="start + one cell + shutdown, one after another",
            cold_estimate_s=round(statistics.median(cold_first_result) * 100, 1),
        ),  # fmt: skip
        "concurrent_kernels": {"kernels": at_once, "wall_s": round(concurrent, 3), "target": "report the wall time of 20 at once"},
        "pss": against(
            pss_ratio, round(TARGET_FORK_PSS_RATIO, 4), unit="forked / cold", forked_alive_at_once=alive,
            forked_pss_mib=round(statistics.median(forked_pss) / 2**20, 1), cold_pss_mib=round(statistics.median(cold_pss) / 2**20, 1),
            note="both with the preload list imported; a forked kernel shares the template's pages with its siblings",
            uss_ratio=round(statistics.median(forked_uss) / statistics.median(cold_uss), 3),
            forked_uss_mib=round(statistics.median(forked_uss) / 2**20, 1), cold_uss_mib=round(statistics.median(cold_uss) / 2**20, 1),
            uss_note="USS: the memory one more kernel adds (its private pages); PSS also charges it 1/N of the template's pages",
        ),  # fmt: skip
    }


# -- CLI start-up --------------------------------------------------------------


def dsagent_command() -> list[str]:
    script = Path(sys.executable).with_name("dsagent")
    return [str(script)] if script.exists() else [sys.executable, "-m", "dsagent"]


def wall_time(argv: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def heavy_imports_of_help() -> list[str]:
    """Heavy packages that ``dsagent --help`` imports (should be none)."""
    probe = (
        "import contextlib, io, json, sys\n"
        "from dsagent.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    try: main(['--help'])\n"
        "    except SystemExit: pass\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True).stdout
    return sorted(set(json.loads(out)) & set(HEAVY_MODULES))


def measure_cli(plan: Plan) -> dict[str, Any]:
    help_argv, bare_argv = [*dsagent_command(), "--help"], [sys.executable, "-c", "pass"]
    wall_time(help_argv)  # page the files in once
    helps, bares = [], []
    for _ in range(max(3, plan.cli_runs)):
        helps.append(wall_time(help_argv))
        bares.append(wall_time(bare_argv))
    heavy = heavy_imports_of_help()
    progress(f"cli: dsagent --help {median_ms(helps):.0f} ms, python -c pass {median_ms(bares):.0f} ms")
    return {
        "dsagent_help": figure(helps, command=" ".join(help_argv)),
        "python_pass": figure(bares),
        "ratio": round(statistics.median(helps) / statistics.median(bares), 3),
        "heavy_modules_imported": heavy,
        "target": "dsagent --help imports none of: " + ", ".join(HEAVY_MODULES),
        "meets_target": not heavy,
    }


# -- the report ----------------------------------------------------------------


def backend_report(name: str, cold: list[float], handout: dict[str, list[float]], trips: dict[str, list[float]], plot: dict[str, Any]) -> dict[str, Any]:
    ours = statistics.median(trips[f"ours:{name}"])
    report: dict[str, Any] = {
        "cold_start_to_first_result": figure(cold),
        "warm_handout_to_first_result": figure(
            handout["total"],
            target=TARGET_WARM_HANDOUT_MS,
            meets_target=median_ms(handout["total"]) <= TARGET_WARM_HANDOUT_MS,
            start_session_median_ms=median_ms(handout["start_session"]),
            first_execute_median_ms=median_ms(handout["first_execute"]),
        ),
        "roundtrip_1p1": figure(trips[f"ours:{name}"]),
        "plot_png_cell": plot,
    }
    if f"raw_same:{name}" in trips:
        report["overhead_vs_raw_jupyter_client"] = against(
            ours / statistics.median(trips[f"raw_same:{name}"]),
            TARGET_OVERHEAD_RATIO,
            raw=figure(trips[f"raw_same:{name}"]),
            baseline="raw jupyter_client loop on a kernel launched as this backend launches its own",
        )
    for transport in ("tcp", "ipc"):
        raw = statistics.median(trips[f"raw_stock_{transport}"])
        report[f"ratio_vs_raw_stock_{transport}"] = round(ours / raw, 3)
    return report


def versus_local(results: dict[str, dict[str, Any]], trips: dict[str, list[float]], name: str) -> dict[str, Any]:
    """Issue 7's targets for ``sandbox``: start <= 1.3x local, ``1+1`` <= 1.1x local."""
    mine, local = results[name], results["local"]

    def ratio(key: str) -> float:
        return mine[key]["median_ms"] / local[key]["median_ms"]

    roundtrip = statistics.median(trips[f"ours:{name}"]) / statistics.median(trips["ours:local"])
    return {
        "cold_start_ratio": against(ratio("cold_start_to_first_result"), TARGET_SANDBOX_START_RATIO),
        "warm_handout_ratio": against(ratio("warm_handout_to_first_result"), TARGET_SANDBOX_START_RATIO),
        "roundtrip_1p1_ratio": against(roundtrip, TARGET_SANDBOX_ROUNDTRIP_RATIO),
    }


def targets_met(report: dict[str, Any]) -> bool:
    """True if every ``meets_target`` anywhere in the report is true."""
    found: list[bool] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if "meets_target" in node:
                found.append(bool(node["meets_target"]))
            for value in node.values():
                walk(value)

    walk(report)
    return all(found)


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
        "jupyter_client": version("jupyter_client"),
        "ipykernel": version("ipykernel"),
        "pyzmq": version("pyzmq"),
    }


async def run(names: list[str], plan: Plan, home: Path) -> tuple[dict[str, Any], dict[str, list[float]]]:
    settings = Settings(home=str(home))
    cold_settings = settings.replace(kernel_fork=False)  # the figures of issues 3 and 7 are of normal launches
    cold = await measure_cold_starts(names, cold_settings, plan)
    handouts = await measure_handouts(names, settings, plan)
    trips = await measure_roundtrips(names, cold_settings, plan, home)
    plots = {name: await measure_plot(name, cold_settings, plan) for name in names}
    results = {name: backend_report(name, cold[name], handouts[name], trips, plots[name]) for name in names}
    if "local" in names:
        results["local"]["fork_server"] = await measure_fork_server(settings, plan, cold["local"])
        results["local"]["stream_copy"] = await measure_stream_copy(settings, plan)
    return results, trips


class _NoStreamCopyBackend:
    """``local`` as it was before issue 28: its kernels keep no stream copy (the wrapper is then not installed)."""

    @staticmethod
    def make(settings: Settings) -> KernelBackend:
        from dsagent.kernel_gateway.local import LocalBackend

        class Plain(LocalBackend):
            def _stream_copy(self, km: Any) -> None:
                return None

        return Plain(settings, pool_size=0)


async def measure_stream_copy(settings: Settings, plan: Plan) -> dict[str, Any]:
    """The 10,000-line print cell on two forked kernels of one template, with and without the copy, interleaved."""
    from dsagent.kernel_gateway.local import LocalBackend

    async with LocalBackend(settings, pool_size=0) as with_copy, _NoStreamCopyBackend.make(settings) as without:
        await with_copy.warm()
        sessions = {"with_copy": await with_copy.start_session(), "without_copy": await without.start_session()}
        runners = {name: timer(lambda s=session: s.execute(PRINT_CELL, timeout=120)) for name, session in sessions.items()}
        samples = await interleave(runners, rounds=max(5, plan.starts * 2), warmup=2)
        for session in sessions.values():
            await session.shutdown()
    ratio = statistics.median(samples["with_copy"]) / statistics.median(samples["without_copy"])
    return {
        "print_10000_lines_with_copy_ms": figure(samples["with_copy"]),
        "print_10000_lines_without_copy_ms": figure(samples["without_copy"]),
        "ratio": against(ratio, TARGET_STREAM_COPY_RATIO),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", help="comma-separated backend names (default: every registered backend whose check() passes)")
    parser.add_argument("--repeat", type=int, help="samples per start-up figure (default 10; 1+1 takes 20x as many)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: one sample of each (the figures mean little)")
    parser.add_argument("--stream-copy-only", action="store_true", help="only the stream copy's cost (issue 28), on local kernels")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plan = Plan.from_args(args.repeat, args.quick)
    try:
        names, skipped = resolve_backends([n.strip() for n in args.backends.split(",") if n.strip()] if args.backends else None)
    except DsagentError as exc:
        progress(f"error: {exc}")
        return 2
    if args.backends and skipped:
        progress("cannot measure: " + "; ".join(f"{n}: {why}" for n, why in skipped.items()))
        return 2
    if args.stream_copy_only:
        with tempfile.TemporaryDirectory(prefix="dsagent-bench-") as home:
            section = asyncio.run(measure_stream_copy(Settings(home=home), plan))
        print(json.dumps({"machine": machine(), "stream_copy": section, "all_targets_met": targets_met(section)}, indent=2))
        return 0
    progress(f"measuring {', '.join(names)} ({'quick' if args.quick else f'{plan.starts} starts, {plan.roundtrips} round trips'})")
    with tempfile.TemporaryDirectory(prefix="dsagent-bench-") as home:
        results, trips = asyncio.run(run(names, plan, Path(home)))
    for name in names:
        if name != "local" and "local" in results:
            results[name]["vs_local"] = versus_local(results, trips, name)
    raw = {t: figure(trips[f"raw_stock_{t}"]) for t in ("tcp", "ipc")}
    report = {
        "machine": machine(),
        "plan": {"starts": plan.starts, "roundtrips": plan.roundtrips, "plots": plan.plots, "quick": args.quick},
        "backends": results,
        "skipped_backends": skipped,
        "raw_jupyter_client_stock_kernel_1p1": raw,
        "cli": measure_cli(plan),
    }
    report["all_targets_met"] = targets_met(report)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
