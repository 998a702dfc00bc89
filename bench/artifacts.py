"""Benchmark of the artifact store; prints one JSON object (figures next to their targets).

    .venv/bin/python bench/artifacts.py              # ~1-2 min
    .venv/bin/python bench/artifacts.py --soak 30    # 6 processes for 30 s instead of 10
    .venv/bin/python bench/artifacts.py --quick      # smaller listing table (10,000), for a smoke run
    .venv/bin/python bench/artifacts.py --baseline none   # skip the same-run comparison with the old layout

``--baseline REV`` (default: the commit before pack files) exports that
revision's ``dsagent`` package with ``git archive`` into a temp dir and runs
the per-cell and 4-process figures with it too, alternating rounds with the
current code so both see the same machine load; ``ratios`` compares them.

Every figure is measured on a real DuckDB file in a temp workspace, through
the public ``Store`` API, with other processes where the figure says so.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from dsagent.artifacts.models import NewArtifact
from dsagent.artifacts.store import Store
from dsagent.settings import Settings

PNG_BYTES = 30_000


def png(tag: str, i: int, size: int = PNG_BYTES) -> bytes:
    head = b"\x89PNG\r\n\x1a\n" + f"{tag}-{i}-".encode()
    return head + os.urandom(size - len(head))


def open_store(home: str) -> Store:
    store = Store(settings=Settings(home=home))
    store.setup()
    return store


def timed(fn: Any, repeat: int) -> dict[str, float]:
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    samples.sort()
    return {"median_ms": round(1000 * statistics.median(samples), 2), "p95_ms": round(1000 * samples[int(0.95 * (len(samples) - 1))], 2)}


def ingest(store: Store, total: int, batch: int, tag: str) -> float:
    """Seconds to add ``total`` 30 KB PNGs in transactions of ``batch`` (one transaction = one cell)."""
    run = store.create_run("batch-child", title=tag)
    items = [NewArtifact(f"{tag}-{i}.png", "image", "image/png", png(tag, i), cell=i // batch) for i in range(total)]
    start = time.perf_counter()
    for first in range(0, total, batch):
        with store.transaction() as tx:
            tx.add_artifacts(run.id, items[first : first + batch])
            tx.append_events(run.id, [("cell_finished", {"cell": first // batch})])
    seconds = time.perf_counter() - start
    store.update_run_status(run.id, "succeeded")
    return seconds


def bench_ingest(home: str) -> dict[str, Any]:
    store = open_store(home)
    out: dict[str, Any] = {"target_per_s": 1000}
    for batch in (1, 10, 100, 1000):
        total = 200 if batch == 1 else 1000
        seconds = ingest(store, total, batch, f"b{batch}")
        rate = total / seconds
        out[f"per_cell_{batch}"] = {"artifacts": total, "per_s": round(rate), "ms_per_transaction": round(1000 * seconds / (total / batch), 1),
                                    "meets_target": rate >= 1000}
    return out


def fill(store: Store, total: int) -> int:
    """``total`` small artifacts over 100 runs, in big transactions; returns one run id to filter on."""
    runs = [store.create_run("notebook" if r % 2 else "exec") for r in range(100)]
    per_txn = 5000
    for first in range(0, total, per_txn):
        with store.transaction() as tx:
            for run in runs[(first // per_txn) * 5 % 100 :][:5]:
                items = [NewArtifact(f"a{first}-{k}.{'png' if k % 3 else 'csv'}", "image" if k % 3 else "file",
                                     "image/png" if k % 3 else "text/csv", f"{run.id}-{first}-{k}".encode(), cell=k % 20)
                         for k in range(per_txn // 5)]
                tx.add_artifacts(run.id, items)
    return runs[7].id


def bench_listing(home: str, total: int) -> dict[str, Any]:
    store = open_store(home)
    start = time.perf_counter()
    run_id = fill(store, total)
    filled = time.perf_counter() - start
    middle = str(store.list_artifacts(limit=1).items[0].id - total // 2)
    latest = timed(lambda: store.list_artifacts(limit=50), 50)
    filtered = timed(lambda: store.list_artifacts(run_id=run_id, kind="image", limit=50), 50)
    by_name = timed(lambda: store.list_artifacts(name="*.csv", limit=50), 50)
    deep_page = timed(lambda: store.list_artifacts(limit=50, cursor=middle), 50)
    one = store.list_artifacts(limit=1).items[0]
    get = timed(lambda: (store.get_artifact(one.id), store.read_bytes(one.id)), 50)
    big = store.add_artifacts(run_id, [NewArtifact("plot.png", "image", "image/png", png("get", 0))])[0]
    get_png = timed(lambda: store.read_bytes(big.id), 50)
    within = lambda t: {**t, "target_ms": 10, "meets_target": t["median_ms"] <= 10}  # noqa: E731
    return {
        "artifacts": store.counts()["artifacts"],
        "fill_seconds": round(filled, 1),
        "db_mib": round(os.path.getsize(store.path) / 2**20, 1),
        "latest_50": within(latest),
        "filtered_run_and_kind_50": within(filtered),
        "filtered_name_glob_50": within(by_name),
        "page_at_middle_via_cursor": within(deep_page),
        "get_metadata_and_bytes_tiny": get,
        "get_bytes_30KB_png": get_png,
    }


def cell_transactions(home: str, cells: int) -> dict[str, Any]:
    """What one notebook cell costs the recorder: its events and one 30 KB PNG in one transaction."""
    store = open_store(home)
    run = store.create_run("notebook")

    def cell(i: int) -> None:
        with store.transaction() as tx:
            tx.append_events(run.id, [("cell_started", {"cell": i}), ("stream", {"name": "stdout", "text": "x" * 200}),
                                      ("display", {"mime": "image/png"}), ("cell_finished", {"cell": i, "status": "ok"})])
            tx.add_artifacts(run.id, [NewArtifact(f"cell-{i}.png", "image", "image/png", png("cell", i), cell=i)])

    for i in range(10):  # warm-up: schema, first pack, first checkpoint
        cell(i)
    samples = []
    start, cpu = time.perf_counter(), time.process_time()
    for i in range(10, 10 + cells):
        t = time.perf_counter()
        cell(i)
        samples.append(time.perf_counter() - t)
    rate = cells / (time.perf_counter() - start)
    cpu_ms = 1000 * (time.process_time() - cpu) / cells  # all threads' CPU: less disturbed by a loaded machine than wall time
    samples.sort()
    return {"cells": cells, "median_ms": round(1000 * statistics.median(samples), 2), "cpu_ms_per_cell": round(cpu_ms, 2),
            "p95_ms": round(1000 * samples[int(0.95 * (len(samples) - 1))], 2), "cells_per_s": round(rate, 1),
            "code": str(Path(sys.modules[Store.__module__].__file__).parents[2])}


def worker(home: str, total: int, batch: int, tag: str) -> None:
    store = open_store(home)
    began, cpu = time.time(), time.process_time()
    seconds = ingest(store, total, batch, tag)
    cpu = time.process_time() - cpu  # all of this process's threads, during the ingest only
    s = store.lock_stats
    print(json.dumps({"began": began, "ended": began + seconds, "seconds": seconds, "cpu_seconds": cpu, "lock_waits": s.waits, "acquisitions": s.acquisitions,
                      "lock_wait_seconds": s.wait_seconds, "max_lock_wait_seconds": s.max_wait_seconds}))


def bench_four_processes(home: str, batch: int, env: dict[str, str] | None = None) -> dict[str, Any]:
    subprocess.run([sys.executable, __file__, "--setup", home], env=env, check=True)
    each = 250
    start = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, __file__, "--worker", home, str(each), str(batch), f"p{i}"], stdout=subprocess.PIPE, text=True,
                              env=env) for i in range(4)]
    reports = [json.loads(p.communicate()[0]) for p in procs]
    wall = time.perf_counter() - start
    # from the first write to the last (process start-up and set-up are not ingest)
    ingest_seconds = max(r["ended"] for r in reports) - min(r["began"] for r in reports)
    rate = 4 * each / ingest_seconds
    return {
        "processes": 4, "artifacts": 4 * each, "per_cell": batch, "wall_seconds_with_startup": round(wall, 2),
        "ingest_seconds": round(ingest_seconds, 2), "total_per_s": round(rate),
        "cpu_ms_per_transaction": round(1000 * sum(r["cpu_seconds"] for r in reports) / (4 * each / batch), 2),
        "lock_waits": sum(r["lock_waits"] for r in reports), "lock_acquisitions": sum(r["acquisitions"] for r in reports),
        "lock_wait_seconds_total": round(sum(r["lock_wait_seconds"] for r in reports), 2),
        "max_lock_wait_ms": round(1000 * max(r["max_lock_wait_seconds"] for r in reports), 1),
        "target_per_s": 1000, "meets_target": rate >= 1000,
    }


def bench_soak(home: str, seconds: float) -> dict[str, Any]:
    """1 reader, 1 scheduler, 4 writers; uses the same worker roles as the reliability test."""
    workers = Path(__file__).resolve().parents[1] / "tests" / "artifacts" / "workers.py"
    open_store(home)
    roles = ["reader", "scheduler", "writer-1", "writer-2", "writer-3", "writer-4"]
    procs = {r: subprocess.Popen([sys.executable, str(workers), "soak", home, r, str(seconds)], stdout=subprocess.PIPE, text=True) for r in roles}
    reports = {r: json.loads(p.communicate()[0]) for r, p in procs.items()}
    latencies = sorted(reports["reader"].pop("latencies"))
    store = open_store(home)
    written = sum(reports[f"writer-{i}"]["artifacts"] for i in range(1, 5))
    return {
        "seconds": seconds,
        "errors": [e for r in reports.values() for e in r["errors"]],
        "artifacts_written": written, "artifacts_in_store": store.counts()["artifacts"], "exact": written == store.counts()["artifacts"],
        "scheduler_runs": reports["scheduler"]["runs"], "reads": len(latencies),
        "read_p50_ms": round(1000 * statistics.median(latencies), 1),
        "read_p95_ms": round(1000 * latencies[int(0.95 * (len(latencies) - 1))], 1),
        "note": "each reader iteration = 2 listings; writers write back to back (worst case)",
    }


def baseline_env(rev: str, into: str) -> dict[str, str] | None:
    """An environment whose ``import dsagent`` is the package as of ``rev`` (None: no baseline)."""
    repo = Path(__file__).resolve().parents[1]
    if rev == "none":
        return None
    if rev == "auto":
        added = subprocess.run(["git", "log", "--diff-filter=A", "--format=%H", "--", "dsagent/artifacts/packs.py"], cwd=repo,
                               capture_output=True, text=True).stdout.split()
        if not added:
            return None
        rev = added[-1] + "^"
    archive = subprocess.run(["git", "archive", rev, "dsagent"], cwd=repo, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", into], input=archive, check=True)
    return {**os.environ, "PYTHONPATH": into}


def compare_cells(tmp: str, env: dict[str, str] | None, rounds: int = 3, cells: int = 100) -> dict[str, Any]:
    """Per-cell transaction figures, current code vs baseline, in alternating rounds (same load for both)."""
    runs: dict[str, list[dict[str, Any]]] = {"current": [], "baseline": []}
    for r in range(rounds):
        for name, e in (("current", None), ("baseline", env)):
            if name == "baseline" and env is None:
                continue
            out = subprocess.run([sys.executable, __file__, "--cells", f"{tmp}/cells-{name}-{r}", str(cells)], env=e,
                                 capture_output=True, text=True, check=True).stdout
            runs[name].append(json.loads(out))
    result: dict[str, Any] = {}
    for name, rs in runs.items():
        if rs:
            result[name] = {"median_ms": round(statistics.median(x["median_ms"] for x in rs), 2),
                            "cpu_ms_per_cell": round(statistics.median(x.get("cpu_ms_per_cell", 0) for x in rs), 2),
                            "p95_ms": round(statistics.median(x["p95_ms"] for x in rs), 2),
                            "cells_per_s": round(statistics.median(x["cells_per_s"] for x in rs), 1), "rounds": len(rs), "cells_per_round": cells,
                            "code": rs[0]["code"]}
    cur = result["current"]
    cur.update(target_median_ms=8, meets_median_target=cur["median_ms"] <= 8, target_cells_per_s=100, meets_rate_target=cur["cells_per_s"] >= 100)
    if "baseline" in result:
        result["speedup_median"] = round(result["baseline"]["median_ms"] / cur["median_ms"], 2)
        result["speedup_cells_per_s"] = round(cur["cells_per_s"] / result["baseline"]["cells_per_s"], 2)
    return result


def compare_four(tmp: str, env: dict[str, str] | None, rounds: int = 3) -> dict[str, Any]:
    """4 processes x 10 artifacts per transaction, current code vs baseline in alternating rounds; the median round of each."""
    runs: dict[str, list[dict[str, Any]]] = {"current": [], "baseline": []}
    for r in range(rounds):
        runs["current"].append(bench_four_processes(f"{tmp}/multi10-{r}", 10))
        if env:
            runs["baseline"].append(bench_four_processes(f"{tmp}/multi10-baseline-{r}", 10, env))
    median = lambda rs: sorted(rs, key=lambda x: x["total_per_s"])[len(rs) // 2]  # noqa: E731
    four = median(runs["current"])
    four["rounds_total_per_s"] = [x["total_per_s"] for x in runs["current"]]
    if runs["baseline"]:
        old = median(runs["baseline"])
        four["baseline_total_per_s"] = old["total_per_s"]
        four["baseline_rounds_total_per_s"] = [x["total_per_s"] for x in runs["baseline"]]
        four["baseline_cpu_ms_per_transaction"] = old["cpu_ms_per_transaction"]
        four["speedup"] = round(four["total_per_s"] / old["total_per_s"], 2)
    return four


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--soak", type=float, default=10.0, help="seconds of the 6-process run (0 = skip)")
    parser.add_argument("--quick", action="store_true", help="10,000 artifacts for the listing figures instead of 100,000")
    parser.add_argument("--baseline", default="auto", help="git revision to compare with ('none' to skip; default: before pack files)")
    parser.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    parser.add_argument("--cells", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--setup", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.setup:
        open_store(args.setup)
        return
    if args.cells:
        print(json.dumps(cell_transactions(args.cells[0], int(args.cells[1]))))
        return
    if args.worker:
        home, total, batch, tag = args.worker
        worker(home, int(total), int(batch), tag)
        return
    results: dict[str, Any] = {"benchmark": "artifacts", "cpus": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2)}
    with tempfile.TemporaryDirectory(prefix="dsagent-bench-") as tmp:
        os.mkdir(f"{tmp}/baseline")
        env = baseline_env(args.baseline, f"{tmp}/baseline")
        results["baseline"] = args.baseline if env else None
        results["cell_transaction_events_and_30KB_png"] = compare_cells(tmp, env)
        results["ingest_1000x30KB_one_process"] = bench_ingest(f"{tmp}/ingest")
        results["listing"] = bench_listing(f"{tmp}/listing", 10_000 if args.quick else 100_000)
        results["ingest_4_processes_per_cell_10"] = compare_four(tmp, env)
        results["ingest_4_processes_per_cell_100"] = bench_four_processes(f"{tmp}/multi100", 100)
        if args.soak > 0:
            results["six_processes"] = bench_soak(f"{tmp}/soak", args.soak)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
