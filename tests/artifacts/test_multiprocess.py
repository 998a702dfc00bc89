"""Many real processes on one workspace: crashes, dead owners, contention, lock timeouts, signals."""

from __future__ import annotations

import os
import signal
import statistics
import time
from datetime import timedelta

import pytest

from dsagent.artifacts.store import Store
from dsagent.errors import StoreLocked

from store_helpers import first_line, read_report, start_worker

SOAK_SECONDS = float(os.environ.get("DSAGENT_SOAK_SECONDS", "8"))


def test_kill_9_mid_transaction_keeps_committed_data_and_opens_cleanly(settings, workspace_home):
    victim = start_worker("kill_target", str(workspace_home))
    info = first_line(victim)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait(timeout=10)
    with Store.open(settings=settings) as store:  # the lock died with the process; DuckDB replays its log
        run = store.get_run(info["run_id"])
        names = sorted(a.name for a in store.list_artifacts(run_id=run.id, limit=100).items)
        assert names == [f"ok-{i}.png" for i in range(5)]  # the open transaction left nothing behind
        assert [e.type for e in store.events(run.id)][-1] == "status"
        assert run.status == "failed" and "ended without finishing" in run.error  # its owner is gone
        assert store.counts()["blobs"] == 5
        fresh = store.create_run("exec")
        assert fresh.id == run.id + 1
        # the killed transaction had already written its 50 images' bytes: gc removes them
        assert store.gc(timedelta(days=1)).orphans_removed == 50
        assert len(store.read_bytes(store.list_artifacts(run_id=run.id, limit=1).items[0].id)) == 30_000


def test_gc_leaves_the_pack_another_process_writes_to_until_that_process_is_gone(settings, workspace_home):
    """Bytes are written before the lock is taken: gc must not take them for orphans while their writer lives."""
    from dsagent.artifacts.models import NewArtifact

    writer = start_worker("bytes_before_commit", str(workspace_home))
    try:
        pending = first_line(writer)
        with Store.open(settings=settings) as store:
            theirs = store.packs.path(pending["pack"])
            size = theirs.stat().st_size
            run = store.create_run("exec")
            mine = store.add_artifacts(run.id, [NewArtifact("m.png", "image", "image/png", b"\x89PNG" + os.urandom(500))])[0]
            assert len(store.packs.numbers()) == 2  # this process appends to a pack of its own
            assert store.gc(timedelta(days=1)).orphans_removed == 0
            assert theirs.stat().st_size == size  # untouched: its writer may still commit rows pointing into it
    finally:
        writer.kill()
        writer.wait()
    with Store.open(settings=settings) as store:
        assert store.gc(timedelta(days=1)).orphans_removed == 1  # its writer is gone: now it is an orphan
        assert not theirs.exists()
        assert store.read_bytes(mine.id)[:4] == b"\x89PNG"


def test_a_run_whose_process_died_is_marked_failed_on_next_open(settings, workspace_home):
    orphan = start_worker("dead_owner", str(workspace_home))
    run_id = read_report(orphan)["run_id"]
    with Store.open(settings=settings) as store:
        run = store.get_run(run_id)
        assert run.status == "failed"
        assert f"pid {orphan.pid}" in run.error and run.finished is not None
        assert store.events(run_id)[-1].payload["status"] == "failed"
        assert store.reap_dead_runs() == []  # once only
        mine = store.create_run("exec")
    with Store.open(settings=settings) as store:
        assert store.get_run(mine.id).status == "running"  # this process is alive: left alone


def test_six_processes_share_one_workspace_with_exact_counts(settings, workspace_home):
    Store.open(settings=settings).__enter__().close()
    home = str(workspace_home)
    roles = ["reader", "scheduler", "writer-1", "writer-2", "writer-3", "writer-4"]
    procs = {role: start_worker("soak", home, role, str(SOAK_SECONDS)) for role in roles}
    reports = {role: read_report(p, timeout=SOAK_SECONDS + 90) for role, p in procs.items()}
    for role, report in reports.items():
        assert report["errors"] == [], f"{role}: {report['errors']}"
    with Store.open(settings=settings) as store:
        for i in range(1, 5):
            mine = reports[f"writer-{i}"]
            assert mine["cells"] > 0
            page = store.list_artifacts(run_id=mine["run_id"], limit=100_000)
            assert len(page.items) == mine["artifacts"]
            cells = [e for e in store.events(mine["run_id"]) if e.type == "cell_finished"]
            assert len(cells) == mine["cells"]
            assert store.get_run(mine["run_id"]).status == "succeeded"
        notebooks = store.list_runs(kind="notebook", limit=100_000).items
        assert len(notebooks) == reports["scheduler"]["runs"] > 0
        assert all(r.status == "succeeded" for r in notebooks)
        writes = sum(reports[f"writer-{i}"]["artifacts"] for i in range(1, 5))
        assert store.counts()["artifacts"] == writes
    latencies = sorted(reports["reader"]["latencies"])
    p95 = latencies[int(0.95 * (len(latencies) - 1))]
    print(f"\nsoak {SOAK_SECONDS:g}s: {writes} artifacts by 4 writers, {reports['scheduler']['runs']} scheduled runs, "
          f"{len(latencies)} reads, read p50 {1000 * statistics.median(latencies):.1f} ms p95 {1000 * p95:.1f} ms, "
          f"max lock wait {max(r['lock_max_wait'] for r in reports.values()) * 1000:.0f} ms")
    assert p95 < 5.0  # generous (a loaded CI machine): the point is that readers are never starved


def test_a_lock_held_too_long_gives_a_clear_error(settings, workspace_home):
    Store.open(settings=settings).__enter__().close()
    holder = start_worker("hold_transaction", str(workspace_home), "6")
    try:
        first_line(holder)
        impatient = Store(settings=settings.replace(store_lock_timeout=0.5))
        started = time.monotonic()
        with pytest.raises(StoreLocked, match="stayed busy for 0.5 s") as info:
            impatient.list_runs()
        assert time.monotonic() - started < 5
        assert "DSAGENT_STORE_LOCK_TIMEOUT" in info.value.hint
    finally:
        holder.kill()
        holder.wait()


def test_sigterm_ends_a_recorded_run_as_cancelled(settings, workspace_home):
    proc = start_worker("recorder_until_signal", str(workspace_home))
    run_id = first_line(proc)["run_id"]
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
    with Store.open(settings=settings) as store:
        run = store.get_run(run_id)
    assert run.status == "cancelled", run
    assert "cancelled" in run.error
