"""Processes the multi-process tests start: each is a real, separate writer or reader.

Run as ``python workers.py ROLE HOME [ARGS...]``; each prints one JSON line
saying exactly what it committed, so the test can check counts.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time

from dsagent.artifacts.models import NewArtifact
from dsagent.artifacts.store import Store
from dsagent.settings import Settings


def _store(home: str, **settings) -> Store:
    store = Store(settings=Settings(home=home, **settings))
    store.setup()
    return store


def _png(tag: str, i: int, size: int = 30_000) -> bytes:
    head = f"{tag}-{i}-".encode()
    return b"\x89PNG\r\n\x1a\n" + head + os.urandom(size - len(head) - 8)


def writer(home: str, n: str, batch: str, tag: str) -> None:
    """Add N artifacts to one run in transactions of BATCH; report throughput and lock waits."""
    store = _store(home)
    run = store.create_run("batch-child", title=tag)
    total, per = int(n), int(batch)
    items = [NewArtifact(f"{tag}-{i}.png", "image", "image/png", _png(tag, i), cell=i // per) for i in range(total)]
    start = time.perf_counter()
    for first in range(0, total, per):
        with store.transaction() as tx:
            tx.add_artifacts(run.id, items[first : first + per])
            tx.append_events(run.id, [("cell_finished", {"cell": first // per})])
    seconds = time.perf_counter() - start
    store.update_run_status(run.id, "succeeded")
    stats = store.lock_stats
    print(json.dumps({"run_id": run.id, "artifacts": total, "seconds": seconds, "lock_waits": stats.waits,
                      "lock_wait_seconds": stats.wait_seconds, "max_lock_wait": stats.max_wait_seconds}), flush=True)


def soak(home: str, role: str, seconds: str) -> None:
    """Work in a loop for SECONDS; count exactly what was committed (or, for the reader, read)."""
    store = _store(home)
    end = time.monotonic() + float(seconds)
    report: dict = {"role": role, "errors": []}
    try:
        if role == "reader":
            latencies = []
            while time.monotonic() < end:
                t = time.perf_counter()
                store.list_artifacts(limit=50)
                store.list_runs(limit=20)
                latencies.append(time.perf_counter() - t)
            report["reads"] = len(latencies)
            report["latencies"] = latencies
        elif role == "scheduler":
            runs = 0
            while time.monotonic() < end:
                run = store.create_run("notebook", status="queued", title="scheduled")
                store.update_run_status(run.id, "running")
                store.append_events(run.id, [("cell_started", {"cell": 0})])
                store.update_run_status(run.id, "succeeded")
                runs += 1
                time.sleep(0.05)
            report["runs"] = runs
        else:
            run = store.create_run("batch-child", title=role)
            artifacts = cells = 0
            while time.monotonic() < end:
                with store.transaction() as tx:
                    tx.add_artifacts(run.id, [NewArtifact(f"{role}-{cells}-{k}.png", "image", "image/png", _png(role, cells * 10 + k, 3000), cell=cells) for k in range(3)])
                    tx.append_events(run.id, [("cell_finished", {"cell": cells})])
                artifacts += 3
                cells += 1
            store.update_run_status(run.id, "succeeded")
            report.update(run_id=run.id, artifacts=artifacts, cells=cells)
    except Exception as exc:  # reported, so the test can say which lock error surfaced
        report["errors"].append(f"{type(exc).__name__}: {exc}")
    report["lock_max_wait"] = store.lock_stats.max_wait_seconds
    report["lock_hold_per_acquisition"] = store.lock_stats.hold_seconds / max(1, store.lock_stats.acquisitions)
    print(json.dumps(report), flush=True)


def kill_target(home: str) -> None:
    """Commit a run with 5 artifacts, then hang inside a second transaction (the test kills -9 us)."""
    store = _store(home)
    run = store.create_run("exec", title="victim")
    store.add_artifacts(run.id, [NewArtifact(f"ok-{i}.png", "image", "image/png", _png("ok", i)) for i in range(5)])
    with store.transaction() as tx:
        tx.add_artifacts(run.id, [NewArtifact(f"lost-{i}.png", "image", "image/png", _png("lost", i)) for i in range(50)])
        tx.append_events(run.id, [("cell_finished", {"cell": 1})])
        print(json.dumps({"run_id": run.id, "state": "in-transaction"}), flush=True)
        time.sleep(120)


def dead_owner(home: str) -> None:
    """Start a run and vanish without finishing it."""
    store = _store(home)
    run = store.create_run("exec", title="orphan")
    print(json.dumps({"run_id": run.id}), flush=True)
    os._exit(0)


def hold_transaction(home: str, seconds: str) -> None:
    """Keep the database busy inside one transaction for SECONDS."""
    store = _store(home)
    run = store.create_run("exec", title="slow")
    with store.transaction() as tx:
        tx.append_events(run.id, [("step", {})])
        print(json.dumps({"state": "holding"}), flush=True)
        time.sleep(float(seconds))


def recorder_until_signal(home: str) -> None:
    """Record a run that waits forever; SIGTERM must end it as cancelled."""
    from dsagent.artifacts.recorder import RunRecorder

    async def main() -> None:
        store = _store(home)
        async with RunRecorder(store, "agent", title="waits") as rec:
            print(json.dumps({"run_id": rec.run_id}), flush=True)
            await asyncio.sleep(120)

    try:
        asyncio.run(main())
    except asyncio.CancelledError:
        sys.exit(143)


def hold_after_writes(home: str, cells: str) -> None:
    """Commit CELLS cell transactions, then keep the file held (a long store_hold_seconds) until killed."""
    store = _store(home, store_hold_seconds=600)
    run = store.create_run("exec", title="holder")
    for i in range(int(cells)):
        with store.transaction() as tx:
            tx.append_events(run.id, [("cell_finished", {"cell": i})])
            tx.add_artifacts(run.id, [NewArtifact(f"held-{i}.png", "image", "image/png", _png("held", i), cell=i)])
    print(json.dumps({"run_id": run.id, "acquisitions": store.lock_stats.acquisitions}), flush=True)
    time.sleep(120)


def bytes_before_commit(home: str) -> None:
    """Write a transaction's bytes to this process's pack (as ``add_artifacts`` does before it takes the lock), then wait."""
    from dsagent.artifacts.blobfiles import sha256_hex

    store = _store(home)
    data = _png("pending", 0)
    ((pack, offset),) = store.packs.append({sha256_hex(data): data}).values()
    print(json.dumps({"pack": pack, "offset": offset}), flush=True)
    time.sleep(120)


def count_artifacts(home: str, timeout: str) -> None:
    """Read the artifact count, waiting at most TIMEOUT seconds for the lock."""
    store = Store(settings=Settings(home=home, store_lock_timeout=float(timeout)))
    print(json.dumps({"artifacts": store.counts()["artifacts"]}), flush=True)


if __name__ == "__main__":
    role, *rest = sys.argv[1:]
    {"writer": writer, "soak": soak, "kill_target": kill_target, "dead_owner": dead_owner,
     "hold_transaction": hold_transaction, "recorder_until_signal": recorder_until_signal,
     "hold_after_writes": hold_after_writes, "count_artifacts": count_artifacts,
     "bytes_before_commit": bytes_before_commit}[role](*rest)
