"""Real `dsagent scheduler` processes on one workspace: one fires, a kill -9 hands over, the orphaned run ends failed."""

from __future__ import annotations

import os
import signal
import subprocess
import time

from notebook_helpers import BIN, cli_env, write_notebook

from dsagent.artifacts.store import Store
from dsagent.runs.schedule_spec import make_schedule


def _wait(predicate, timeout=60.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _runs(settings):
    with Store.open(settings=settings) as store:
        return [r for r in store.list_runs(kind="notebook", limit=200).items if r.schedule_id == "often"]


def test_two_schedulers_fire_once_and_a_killed_one_hands_over(settings, workspace_home, tmp_path):
    nb = write_notebook(tmp_path / "slow.ipynb", "import time; time.sleep(pause)", params="pause = 0.5")
    with Store.open(settings=settings) as store:  # every second (six fields: seconds last)
        store.add_schedule(make_schedule("often", "* * * * * *", notebook=nb, text_parameters={"pause": "1.5"}))
    env = {**cli_env(workspace_home), "DSAGENT_SCHEDULER_TICK": "0.2", "DSAGENT_SCHEDULER_LEASE_SECONDS": "60"}
    procs = [subprocess.Popen([str(BIN / "dsagent"), "scheduler"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    try:
        running = _wait(lambda: [r for r in _runs(settings) if r.status == "running"], what="a scheduled run")[0]
        holder = next(p for p in procs if p.pid == running.owner_pid)
        other = next(p for p in procs if p is not holder)
        os.kill(holder.pid, signal.SIGKILL)  # mid-run
        holder.wait(10)
        # the other process takes the lease over (the holder is gone), marks the orphan failed and fires again
        orphan = _wait(lambda: next((r for r in _runs(settings) if r.id == running.id and r.status == "failed"), None),
                       what="the orphaned run marked failed")
        assert "ended without finishing" in orphan.error
        later = _wait(lambda: [r for r in _runs(settings) if r.id > running.id and r.status == "succeeded"], what="a run after the handover")
        assert {r.owner_pid for r in later} == {other.pid}
        runs = _runs(settings)
        assert {r.owner_pid for r in runs} <= {holder.pid, other.pid}
        # never two at once: each run starts after the one before it finished
        ordered = sorted((r for r in runs if r.id != running.id and r.finished), key=lambda r: r.started)
        assert all(a.finished <= b.started for a, b in zip(ordered, ordered[1:]))
        other.send_signal(signal.SIGTERM)
        assert other.wait(30) == 0
        with Store.open(settings=settings) as store:
            assert store.scheduler_lease() is None
            assert store.active_schedule_runs("often") == []  # a run cut off by the stop ended cancelled
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)


async def test_a_scheduler_killed_mid_run_and_restarted_fails_the_orphan_and_goes_on(settings, workspace_home, tmp_path):
    """The only scheduler is killed -9 mid-run; the next one to start (here in this process) takes the dead holder's
    lease at once, marks the orphaned run failed and fires the schedule again."""
    import asyncio

    from dsagent.runs.scheduler import Scheduler

    nb = write_notebook(tmp_path / "slow.ipynb", "import time; time.sleep(pause)", params="pause = 0.5")
    with Store.open(settings=settings) as store:
        store.add_schedule(make_schedule("often", "* * * * * *", notebook=nb, text_parameters={"pause": "60"}))
    env = {**cli_env(workspace_home), "DSAGENT_SCHEDULER_TICK": "0.2", "DSAGENT_SCHEDULER_LEASE_SECONDS": "600"}
    proc = subprocess.Popen([str(BIN / "dsagent"), "scheduler"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        running = await asyncio.to_thread(_wait, lambda: [r for r in _runs(settings) if r.status == "running"], 60.0, "a scheduled run")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    with Store.open(settings=settings) as store:  # an edit while no scheduler runs: the next firings are quick
        store.update_schedule("often", target={**store.get_schedule("often").target, "text_parameters": {"pause": "0.1"}})
    restarted = Scheduler(settings)  # the lease (600 s) is still "valid", but its holder on this host is gone
    fired = []
    deadline = time.monotonic() + 60
    while not fired and time.monotonic() < deadline:
        fired = await restarted.tick()
        await asyncio.sleep(0.2)
    await restarted.wait_idle()
    # the firing's own task, not wait_idle()'s list: a quick run can end during the sleep after the tick that fired it
    runs = [await firing.task for firing in fired]
    await restarted.stop()
    assert fired and [r.status for r in runs] == ["succeeded"]
    orphan = next(r for r in _runs(settings) if r.id == running[0].id)
    assert orphan.status == "failed" and "ended without finishing" in orphan.error
