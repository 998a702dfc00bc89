"""A process keeps the workspace file between its units of work only while no other process waits.

``store_hold_seconds`` far longer than the other process's lock timeout: the
other process can only get in because the holder saw it waiting and let go.
"""

from __future__ import annotations

import os
import signal
import time
from datetime import timedelta

from dsagent.artifacts.models import NewArtifact
from dsagent.artifacts.store import Store

from store_helpers import first_line, read_report, start_worker


def _cell(store: Store, run_id: int, i: int) -> None:
    with store.transaction() as tx:
        tx.append_events(run_id, [("cell_finished", {"cell": i})])
        tx.add_artifacts(run_id, [NewArtifact(f"c{i}.png", "image", "image/png", b"\x89PNG" + os.urandom(3000), cell=i)])


def test_consecutive_units_of_work_share_one_attach_and_a_waiting_process_gets_in(settings, workspace_home):
    with Store.open(settings=settings.replace(store_hold_seconds=600)) as store:
        run = store.create_run("exec")
        before = store.lock_stats.acquisitions
        for i in range(5):
            _cell(store, run.id, i)
        assert store.list_artifacts(run_id=run.id, limit=10).next_cursor is None
        assert store.lock_stats.acquisitions == before  # held from create_run on: no lock, no attach per cell
        # another process waits at most 20 s; this one would hold for 600 s unless it gives way
        assert read_report(start_worker("count_artifacts", str(workspace_home), "20"))["artifacts"] == 5
        _cell(store, run.id, 5)  # attaches again, and sees what the file holds now
        assert store.lock_stats.acquisitions == before + 1
        assert store.counts()["artifacts"] == 6


def test_a_writer_killed_while_holding_the_file_loses_nothing_it_committed(settings, workspace_home):
    victim = start_worker("hold_after_writes", str(workspace_home), "4")
    info = first_line(victim)
    assert info["acquisitions"] <= 2  # set-up, then one attach for all its writes
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait(timeout=10)
    with Store.open(settings=settings) as store:  # its commits are in the log: the attach replays them
        arts = store.list_artifacts(run_id=info["run_id"], limit=10).items
        assert sorted(a.name for a in arts) == [f"held-{i}.png" for i in range(4)]
        assert all(len(store.read_bytes(a.id)) == 30_000 for a in arts)
        assert store.get_run(info["run_id"]).status == "failed"  # reaped: its owner is gone
        assert store.gc(timedelta(days=1)).orphans_removed == 0
        store.db.release()
        assert store.db.log_bytes() <= 16 << 10  # a release leaves only a short log to replay


def test_hold_zero_lets_go_after_every_unit_of_work(settings):
    with Store.open(settings=settings.replace(store_hold_seconds=0)) as store:
        run = store.create_run("exec")
        before = store.lock_stats.acquisitions
        _cell(store, run.id, 0)
        _cell(store, run.id, 1)
        assert store.lock_stats.acquisitions == before + 2


def test_a_store_dropped_while_holding_does_not_keep_others_out(settings):
    """A Store never closed (a CLI command's) must not take its lock descriptor to the garbage collector."""
    import gc
    import weakref

    dropped = Store(settings=settings.replace(store_hold_seconds=600))
    dropped.setup()
    dropped.create_run("exec")
    held = weakref.ref(dropped.db)
    del dropped
    gc.collect()
    assert held() is not None  # kept alive (by the watcher) while it holds the file, so its lock cannot leak
    other = Store(settings=settings.replace(store_lock_timeout=20))
    assert other.counts()["runs"] == 1
    other.close()


def _counters(store: Store) -> dict[str, int]:
    with store.session(write=False) as con:
        return dict(con.execute("SELECT name, last_id FROM id_counters").fetchall())


def test_ids_handed_out_while_holding_are_saved_once_far_ahead_of_the_stored_counters(settings, monkeypatch):
    from dsagent.artifacts import transaction

    with Store.open(settings=settings.replace(store_hold_seconds=600)) as store:
        before = _counters(store)
        run = store.create_run("exec")
        for i in range(3):
            _cell(store, run.id, i)
        ids = [a.id for a in store.list_artifacts(run_id=run.id, limit=10).items]
        assert sorted(ids) == list(range(min(ids), min(ids) + 3))  # one id after the other, no gaps
        assert store.events(run.id)[-1].seq == 4  # status + 3 cells: seqs remembered, not recounted wrong
        store.db.release()
        assert _counters(store) == before  # a few ids ahead: not worth an UPDATE per writer turn
        _cell(store, run.id, 3)  # a new hold finds the ids in use all the same
        monkeypatch.setattr(transaction, "SAVE_IDS_AHEAD", 2)
        _cell(store, run.id, 4)
        store.db.release()
        assert _counters(store) == {**before, "artifacts": max(ids) + 2}  # (no run was created in that hold)
        assert sorted(a.id for a in store.list_artifacts(run_id=run.id, limit=10).items) == list(range(min(ids), min(ids) + 5))


def test_ids_stay_unique_after_a_holder_is_killed_before_saving_its_counters(settings, workspace_home):
    victim = start_worker("hold_after_writes", str(workspace_home), "3")
    info = first_line(victim)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait(timeout=10)
    for hold in (0, 600):  # the path that asks the file every time, and the one that remembers
        with Store.open(settings=settings.replace(store_hold_seconds=hold)) as store:
            used = {a.id for a in store.list_artifacts(limit=100).items}
            runs = {r.id for r in store.list_runs(limit=100).items}
            assert store.gc(timedelta(0)).runs >= 1  # the newest ids are deleted: they must not come back
            assert store.counts()["artifacts"] == 0
            run = store.create_run("exec")
            new = store.add_artifacts(run.id, [NewArtifact("n.png", "image", "image/png", b"\x89PNG" + os.urandom(100))])
            assert run.id > max(runs) and new[0].id > max(used)
            store.update_run_status(run.id, "succeeded")


def test_a_holder_can_tell_a_waiting_reader_from_a_waiting_writer(tmp_path):
    """Writers give way after a long turn among themselves, but a reader (a dashboard) must be seen as one."""
    import threading

    from dsagent.artifacts.turns import LockTimeout, TurnLock

    path = str(tmp_path / "db.lock")
    holder = TurnLock(path)
    holder.acquire(1)
    try:
        for reader in (False, True):
            waiter = TurnLock(path)
            gave_up = threading.Event()

            def wait(waiter=waiter, reader=reader, gave_up=gave_up) -> None:
                try:
                    waiter.acquire(0.3, reader=reader)
                except LockTimeout:
                    gave_up.set()

            thread = threading.Thread(target=wait)
            thread.start()
            deadline = time.monotonic() + 0.25
            while not holder.others_waiting() and time.monotonic() < deadline:
                time.sleep(0.005)
            assert holder.others_waiting()
            assert holder.readers_waiting() is reader
            thread.join()
            assert gave_up.is_set()  # the holder never let go
            assert not holder.others_waiting() and not holder.readers_waiting()
    finally:
        holder.release()
