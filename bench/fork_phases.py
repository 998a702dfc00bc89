"""Where a fresh forked kernel's life goes (issue 16): per-phase medians of start, one cell, shutdown.

Prints ONE JSON object to stdout (progress goes to stderr). Each sample is a
``local`` kernel forked from the preloaded template, as a sweep uses them:
``start_session()``, ``1+1``, ``shutdown()``. The client's phases are timed by
wrapping the methods that make them (jupyter_client's ``start_kernel``, the
fork request, the wait for ``kernel_info``, the shutdown request, and the
kernel's exit, which runs in the background after ``shutdown()`` returned);
the kernel's own cost is read from /proc when its first cell is answered:
CPU time of all its threads (schedstat, in ns) and its minor page faults
(each one a page of the template copied, or a new one). Per kernel it also
prints the CPU of this process, of the template (fork, reap) and of the
kernel's whole life (the template's reaped-children CPU), user and system
apart, and how many ``kernel_info`` requests a start took (more than one: the
status was missed on iopub and asked again). Compare two trees by
running it with each (``PYTHONPATH=<other checkout>``), interleaved, on the
same machine.

    .venv/bin/python bench/fork_phases.py                 # 30 kernels
    .venv/bin/python bench/fork_phases.py --kernels 10    # quicker
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
from pathlib import Path
from typing import Any, Callable

from dsagent.kernel_gateway import forkserver, local
from dsagent.kernel_gateway.local import LocalBackend
from dsagent.settings import Settings

#: client-side phases: (owner, method name, phase name)
PHASES = (
    (forkserver.ForkingKernelManager, "start_kernel", "start_kernel (kernelspec, ports, connection file, fork request)"),
    (forkserver.ForkServer, "spawn", "fork request round trip (the template's fork() included)"),
    (forkserver.ForkingKernelManager, "wait_started", "the kernel's initialize() until it says it has started (client made meanwhile)"),
    (local, "wait_ready", "kernel_info answered and its status seen on iopub (before wait_started: the child's initialize() too)"),
    (forkserver.ForkingKernelManager, "_async_request_shutdown", "shutdown request"),
    (forkserver.ForkingKernelManager, "_async_finish_shutdown", "kernel exit, seen by its pidfd (in the background)"),
)


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def instrument(samples: dict[str, list[float]]) -> None:
    """Wrap each phase's method so that every call appends its wall seconds to ``samples[phase]``."""
    for owner, name, phase in PHASES:
        original = getattr(owner, name, None)
        if original is None:  # an older tree (PYTHONPATH) without this phase
            continue
        samples[phase] = []
        if asyncio.iscoroutinefunction(original):

            async def timed_async(*args: Any, _f: Callable[..., Any] = original, _p: str = phase, **kwargs: Any) -> Any:
                t0 = time.perf_counter()
                try:
                    return await _f(*args, **kwargs)
                finally:
                    samples[_p].append(time.perf_counter() - t0)

            setattr(owner, name, timed_async)
        else:

            def timed(*args: Any, _f: Callable[..., Any] = original, _p: str = phase, **kwargs: Any) -> Any:
                t0 = time.perf_counter()
                try:
                    return _f(*args, **kwargs)
                finally:
                    samples[_p].append(time.perf_counter() - t0)

            setattr(owner, name, timed)


def process_cpu_ms(pid: int) -> tuple[float, float, float, float]:
    """CPU milliseconds of a process (user, system) and of its reaped children (user, system), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = 1000 / os.sysconf("SC_CLK_TCK")
    return tuple(int(f) * tick for f in fields[11:15])  # type: ignore[return-value]


def kernel_cost(pid: int) -> tuple[float, int]:
    """CPU milliseconds of all the kernel's threads so far, and its minor page faults."""
    cpu_ns = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            cpu_ns += int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0])
        except OSError:
            pass  # a thread that just ended
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return cpu_ns / 1e6, int(fields[7])


def count_kernel_info_requests() -> list[int]:
    """Count kernel_info requests: one per start, more when its iopub status was missed and it was asked again."""
    from jupyter_client import AsyncKernelClient

    calls = [0]
    original = AsyncKernelClient.kernel_info

    def kernel_info(self: Any) -> str:
        calls[0] += 1
        return original(self)

    AsyncKernelClient.kernel_info = kernel_info  # type: ignore[method-assign]
    return calls


async def measure(kernels: int) -> dict[str, Any]:
    samples: dict[str, list[float]] = {}
    instrument(samples)
    kernel_info_calls = count_kernel_info_requests()
    whole: dict[str, list[float]] = {"start_session": [], "first 1+1": [], "shutdown() returns": [], "cycle": []}
    cpu_ms, faults = [], []
    async with LocalBackend(Settings(home=tempfile.mkdtemp(prefix="dsagent-bench-")), pool_size=0) as backend:
        await backend.warm()
        for _ in range(3):  # the template's first forks, and this process's first kernel, pay one-off costs
            async with await backend.start_session() as session:
                await session.execute("1+1")
        await asyncio.gather(*backend._exits)  # their exits, so they are not counted below (aclose() would make later exits inline)
        for series in samples.values():
            series.clear()
        template = None
        caller_cpu0 = time.process_time()
        caller_times0 = os.times()
        kernel_info_calls[0] = 0
        for i in range(kernels):
            t0 = time.perf_counter()
            session = await backend.start_session()
            t1 = time.perf_counter()
            result = await session.execute("1+1")
            t2 = time.perf_counter()
            if not session._kernel.km.forked or result.result != "2":
                raise SystemExit(f"kernel {i} was not forked or 1+1 gave {result.status} {result.result!r}")
            cpu, minflt = kernel_cost(session.kernel_pid)
            if template is None:  # the forked kernel's parent; its children's CPU counts every reaped kernel's whole life
                template = int(Path(f"/proc/{session.kernel_pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
                template_cpu0 = process_cpu_ms(template)
            await session.shutdown()
            t3 = time.perf_counter()
            for key, value in (("start_session", t1 - t0), ("first 1+1", t2 - t1), ("shutdown() returns", t3 - t2), ("cycle", t3 - t0)):
                whole[key].append(value)
            cpu_ms.append(cpu)
            faults.append(minflt)
            progress(f"kernel {i + 1}/{kernels}: {(t3 - t0) * 1000:.0f} ms")
        await asyncio.gather(*backend._exits)
        caller_cpu = (time.process_time() - caller_cpu0) * 1000 / kernels
        own_user, own_sys, reaped_user, reaped_sys = (a - b for a, b in zip(process_cpu_ms(template), template_cpu0))
        caller_times = os.times()
        caller_user = (caller_times.user - caller_times0.user) * 1000 / kernels
        caller_sys = (caller_times.system - caller_times0.system) * 1000 / kernels
        per = kernels - 1  # the first kernel started before template_cpu0 was read
    return {
        "kernels": kernels,
        "wall_median_ms": {key: round(statistics.median(v) * 1000, 2) for key, v in whole.items()},
        "wall_min_ms": {key: round(min(v) * 1000, 2) for key, v in whole.items()},
        "client_phase_median_ms": {key: round(statistics.median(v) * 1000, 2) for key, v in samples.items() if v},
        "kernel_info_requests_per_start": round(kernel_info_calls[0] / kernels, 2),
        "cpu_ms_per_kernel": {
            "caller (this process: jupyter_client, our session code)": round(caller_cpu, 1),
            "template (fork, reap)": round((own_user + own_sys) / per, 1),
            "kernel's whole life (start, 1+1, exit; from the template's reaped-children CPU)": round((reaped_user + reaped_sys) / per, 1),
        },
        "cpu_ms_per_kernel_user_system": {
            "caller": [round(caller_user, 1), round(caller_sys, 1)],
            "template": [round(own_user / per, 1), round(own_sys / per, 1)],
            "kernel's whole life": [round(reaped_user / per, 1), round(reaped_sys / per, 1)],
            "note": "system time of a fork and an exit is mostly page tables and copy-on-write faults of the template's ~150 MiB",
        },
        "kernel_at_first_result": {"cpu_ms_all_threads_median": round(statistics.median(cpu_ms), 1), "minor_page_faults_median": statistics.median(faults)},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kernels", type=int, default=30, help="fresh kernels to measure (default 30)")
    args = parser.parse_args(argv)
    if sys.platform != "linux":
        progress("the fork server is Linux-only")
        return 2
    report = {"load_average_1m": round(os.getloadavg()[0], 2), "tree": str(Path(local.__file__).parents[2]), **asyncio.run(measure(args.kernels))}
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
