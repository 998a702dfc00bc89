"""Batch-sweep benchmark: N small notebooks through ``run_batch`` on a Dask LocalCluster vs papermill loops.

Prints ONE JSON object to stdout (progress goes to stderr):

* ``run_batch``: one sweep of N parameter sets (a 3-cell notebook) on a
  LocalCluster started for it, for each worker count in ``--workers`` (2 and
  4 by default): notebooks per second over the children (first submit to last
  result) and over the whole call (cluster start, checks, store), and what
  writing the children's results cost the caller per child (``store_ms_per_child``, wall time of the
  group-commit writes; ``store_transactions``: how many groups they took), and the CPU a child cost
  each kind of process (``cpu_ms_per_child``: the caller with the Dask scheduler and the store writes,
  the Dask workers, the kernels with the fork template that forks and reaps them; at 10 notebooks/s
  two cores give 200 ms in all), over the children and over the whole call
  (``cpu_ms_per_child_whole_call``: the cluster's start and stop too);
* ``papermill_api``: a loop of ``papermill.execute_notebook(...)`` in this
  process (its default engine: a fresh kernel per notebook), sampled on
  ``--api-sample`` notebooks and extrapolated to N;
* ``papermill_cli``: a loop of ``papermill in out -p n I`` processes, sampled on
  ``--cli-sample`` notebooks and extrapolated to N (``extrapolated`` says so).

Ratios are papermill seconds for N notebooks / run_batch seconds for N (above 1:
run_batch is faster). Target: at least 10 notebooks/s through run_batch on the
2-core machine. Each child needs a kernel no one used before, so the kernel
start cost bounds the rate; the figures say where the time goes.

    .venv/bin/python bench/batch.py                      # N=100, workers 2 and 4 (threads: the batch_threads_per_worker setting)
    .venv/bin/python bench/batch.py --n 20 --workers 2 --api-sample 5 --cli-sample 2   # quick
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import nbformat

TARGET_NOTEBOOKS_PER_SECOND = 10.0
BIN = Path(sys.executable).parent
CELLS = ("n = 3", "squares = [i * i for i in range(n)]", "print(sum(squares))")


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def write_notebook(folder: Path) -> Path:
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    nb.cells = [nbformat.v4.new_code_cell(source) for source in CELLS]
    nb.cells[0].metadata["tags"] = ["parameters"]
    path = folder / "squares.ipynb"
    nbformat.write(nb, path)
    return path


class CpuMeter:
    """CPU seconds used while the children run, by kind of process: this process (client, scheduler, result decoding,
    store writes), the Dask worker processes, and the kernels (this interpreter's fork templates, which fork and reap
    them, plus the kernels still alive at the end: the pools' spares). CPU, unlike wall time, says where a child's
    cost goes even on a loaded machine.

    Templates are detached processes shared by every caller of this interpreter; one a worker starts during the
    sweep is found then and counted from that moment (its own start, a one-off import of numpy/pandas/matplotlib,
    mostly before). A thread samples every ``period`` seconds; its own CPU is taken off the caller's.
    """

    def __init__(self, period: float = 0.2, *, born_now: bool = False) -> None:
        """``born_now``: processes found after the start (the cluster's workers, a template they start) are counted
        from their birth, for the CPU of a whole call (cluster start and stop included)."""
        import psutil

        self.psutil = psutil
        self.me = psutil.Process()
        self.period = period
        self.workers: dict[int, list[float]] = {}  # pid -> [first, last]
        self.templates: dict[int, list[float]] = {}  # pid -> [first, last] (own + reaped children)
        self.kernels: dict[int, float] = {}  # live kernels' CPU at the last sample
        self._procs: dict[int, Any] = {}
        self._not_template: set[int] = set()
        self.sampler_cpu = 0.0
        self._stop = threading.Event()
        self.start_me = self._cpu(self.me)
        self.born_now = False
        self.sample()
        self.born_now = born_now
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _cpu(self, proc: Any, children: bool = False) -> float:
        try:
            t = proc.cpu_times()
        except self.psutil.Error:
            return -1.0
        return t.user + t.system + ((t.children_user + t.children_system) if children else 0.0)

    def _proc(self, pid: int) -> Any:
        proc = self._procs.get(pid)
        if proc is None:
            proc = self._procs[pid] = self.psutil.Process(pid)
        return proc

    def _find_templates(self) -> None:
        for pid in self.psutil.pids():
            if pid in self.templates or pid in self._not_template:
                continue
            try:
                line = self._proc(pid).cmdline()
            except self.psutil.Error:
                continue
            if len(line) > 1 and line[0] == sys.executable and line[1].endswith("forktemplate.py"):
                self.templates[pid] = [0.0 if self.born_now else self._cpu(self._procs[pid], children=True)] * 2
            else:
                self._not_template.add(pid)
                self._procs.pop(pid, None)

    def sample(self) -> None:
        self._find_templates()
        for pid, seen in self.templates.items():
            used = self._cpu(self._proc(pid), children=True)
            if used >= 0:
                seen[1] = used
        kernels: dict[int, float] = {}
        for pid in self.templates:
            try:
                for kid in self._proc(pid).children():
                    used = self._cpu(kid)
                    if used >= 0:
                        kernels[kid.pid] = used
            except self.psutil.Error:
                pass
        self.kernels = kernels
        try:
            descendants = self.me.children(recursive=True)
        except self.psutil.Error:
            return
        for proc in descendants:  # a template a worker started is the worker's child until the worker ends
            if proc.pid in self.templates or proc.pid in kernels:
                continue
            used = self._cpu(proc)
            if used >= 0:
                self.workers.setdefault(proc.pid, [0.0 if self.born_now else used, used])[1] = used

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            before = time.thread_time()
            self.sample()
            self.sampler_cpu += time.thread_time() - before

    def stop(self) -> None:
        """A last sample (call it before the cluster closes: its workers are gone then), and no more."""
        if not self._stop.is_set():
            self._stop.set()
            self._thread.join()
            before = time.thread_time()
            self.sample()
            self.sampler_cpu += time.thread_time() - before
            self.end_me = self._cpu(self.me)

    def result(self, n: int, other_meters: float = 0.0) -> dict[str, float]:
        """CPU ms per child by kind of process; ``other_meters``: CPU seconds of other meters' samplers in this process."""
        self.stop()
        caller = self.end_me - self.start_me - self.sampler_cpu - other_meters
        workers = sum(last - first for first, last in self.workers.values())
        kernels = sum(last - first for first, last in self.templates.values()) + sum(self.kernels.values())
        per = lambda seconds: round(1000 * seconds / max(n, 1), 1)  # noqa: E731
        return {"caller": per(caller), "dask_workers": per(workers), "kernels": per(kernels),
                "total": per(caller + workers + kernels), "meter_ms_not_counted": round(1000 * self.sampler_cpu, 1)}


async def sweep(nb: Path, n: int, workers: int, home: Path) -> dict[str, Any]:
    from dsagent.runs.batch import execute_batch
    from dsagent.settings import Settings

    settings = Settings(home=str(home), batch_confirm_above=max(n, 1))
    times: list[float] = []
    meters: list[CpuMeter] = []

    def started(run: Any, children: Any) -> None:
        times.append(time.perf_counter())
        meters.append(CpuMeter())

    def finished(update: Any) -> None:
        times.append(time.perf_counter())
        if update.done == n and meters:  # the last child: stop measuring before the cluster closes
            meters[0].stop()

    whole = CpuMeter(born_now=True)
    t0 = time.perf_counter()
    outcome = await execute_batch(nb, {"n": list(range(n))}, workers=workers, settings=settings, retries=0, on_start=started, on_child=finished)
    total = time.perf_counter() - t0
    children = times[-1] - times[0]
    ok = outcome.counts.get("succeeded", 0)
    cpu = meters[0].result(n)
    call_cpu = whole.result(n, other_meters=meters[0].sampler_cpu)
    say(f"run_batch workers={workers}: {n} notebooks, {ok} succeeded, children {children:.1f}s, call {total:.1f}s, CPU ms/child {cpu}, whole call {call_cpu}")
    return {
        "workers": workers, "threads_per_worker": settings.batch_threads_per_worker, "notebooks": n, "succeeded": ok, "children_seconds": round(children, 3), "call_seconds": round(total, 3),
        "notebooks_per_second": round(n / children, 3), "notebooks_per_second_whole_call": round(n / total, 3),
        "store_ms_per_child": round(1000 * outcome.store_seconds / max(n, 1), 2),
        "store_transactions": outcome.store_groups,
        "cpu_ms_per_child": cpu,
        "cpu_ms_per_child_whole_call": call_cpu,
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }


def papermill_api(nb: Path, sample: int, folder: Path) -> float:
    import papermill

    t0 = time.perf_counter()
    for i in range(sample):
        papermill.execute_notebook(str(nb), str(folder / f"api-{i}.ipynb"), parameters={"n": i}, progress_bar=False, log_output=False)
    return (time.perf_counter() - t0) / sample


def papermill_cli(nb: Path, sample: int, folder: Path) -> float:
    env = {**os.environ, "PYDEVD_DISABLE_FILE_VALIDATION": "1"}
    t0 = time.perf_counter()
    for i in range(sample):
        subprocess.run([str(BIN / "papermill"), str(nb), str(folder / f"cli-{i}.ipynb"), "-p", "n", str(i), "--no-progress-bar"],
                       env=env, check=True, capture_output=True)
    return (time.perf_counter() - t0) / sample


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100, help="notebooks per sweep")
    parser.add_argument("--workers", default="2,4", help="worker counts of the LocalCluster, comma-separated")
    parser.add_argument("--api-sample", type=int, default=20, help="papermill API runs to time (extrapolated to N)")
    parser.add_argument("--cli-sample", type=int, default=5, help="papermill CLI runs to time (extrapolated to N)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dsagent-bench-batch-") as tmp:
        folder = Path(tmp)
        nb = write_notebook(folder)
        sweeps = [asyncio.run(sweep(nb, args.n, int(w), folder / f"home-{w}")) for w in args.workers.split(",")]
        api = papermill_api(nb, args.api_sample, folder)
        say(f"papermill API: {api:.2f}s per notebook")
        cli = papermill_cli(nb, args.cli_sample, folder)
        say(f"papermill CLI: {cli:.2f}s per notebook")
    first = sweeps[0]
    for s in sweeps:
        s["ratio_papermill_api_over_run_batch"] = round(api * args.n / s["children_seconds"], 2)
        s["ratio_papermill_cli_over_run_batch"] = round(cli * args.n / s["children_seconds"], 2)
    report = {
        "notebooks": args.n,
        "run_batch": sweeps,
        "papermill_api": {"seconds_per_notebook": round(api, 3), "sampled": args.api_sample, "extrapolated": args.api_sample != args.n,
                          "seconds_for_n": round(api * args.n, 2), "notebooks_per_second": round(1 / api, 3)},
        "papermill_cli": {"seconds_per_notebook": round(cli, 3), "sampled": args.cli_sample, "extrapolated": args.cli_sample != args.n,
                          "seconds_for_n": round(cli * args.n, 2), "notebooks_per_second": round(1 / cli, 3)},
        "scaling_last_over_first_workers": round(sweeps[-1]["notebooks_per_second"] / first["notebooks_per_second"], 2) if len(sweeps) > 1 else None,
        "target_notebooks_per_second": TARGET_NOTEBOOKS_PER_SECOND,
        "meets_target": first["notebooks_per_second"] >= TARGET_NOTEBOOKS_PER_SECOND,
        "cpu_count": os.cpu_count(),
        "load_average_at_end": os.getloadavg(),
    }
    report["all_targets_met"] = report["meets_target"]
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
