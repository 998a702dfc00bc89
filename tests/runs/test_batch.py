"""Batch sweeps on a real Dask LocalCluster (2 worker processes, shared by the module's tests)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import time
import shutil
import uuid
from pathlib import Path

import psutil
import pytest
from notebook_helpers import BIN, cli_env, run_cli, write_notebook

from dsagent.artifacts.store import Store
from dsagent.errors import DsagentError
from dsagent.runs.batch import LOCAL_CLUSTER_CONFIG, execute_batch, expand_grid, local_cluster_options
from dsagent.runs.batch_compare import batch_table, save_table
from dsagent.settings import Settings

# one Dask LocalCluster per module: every test of it on one xdist worker, so it starts once
pytestmark = pytest.mark.xdist_group("dask")

SWEEP_CELLS = (
    "import dsagent\nif region == 'us' and alpha > 0.3:\n    raise ValueError('no model for us at alpha > 0.3')",
    "dsagent.record('score', alpha * (2 if region == 'eu' else 3))\n_ = open('out.txt', 'w').write(region)",
)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A LocalCluster as a sweep starts for itself (one child per worker at once), shared by the module's tests."""
    import dask.config
    from distributed import LocalCluster

    home = tmp_path_factory.mktemp("workers-home")
    # a fork template of the workers' own (a preload entry no one else has): the template is a child of the worker
    # that starts it, so one shared with other test workers would put their kernels under this cluster's workers,
    # and _no_kernels_left would blame this module's batches for them
    preload = f"{Settings().kernel_preload}, dsagent_test_dask_template_{uuid.uuid4().hex[:8]}"
    options = local_cluster_options(Settings(home=str(home), batch_threads_per_worker=1), 2)
    options["env"] = {**options["env"], "DSAGENT_KERNEL_PRELOAD": preload}
    with dask.config.set(LOCAL_CLUSTER_CONFIG):
        c = LocalCluster(**options)
    with c:
        yield c


async def _no_kernels_left(cluster, timeout: float = 30) -> None:
    """A pool's kernel that was still starting when its batch ended is stopped once it is up."""
    deadline = time.monotonic() + timeout
    while _kernels_under(_worker_pids(cluster)) and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    assert _kernels_under(_worker_pids(cluster)) == []


@pytest.fixture
def sweep_nb(tmp_path: Path) -> Path:
    return write_notebook(tmp_path / "sweep.ipynb", *SWEEP_CELLS, params="alpha = 0.1\nregion = 'eu'")


def _worker_pids(cluster) -> set[int]:
    return {proc.pid for proc in (w.process.process for w in cluster.workers.values()) if proc is not None}


def _kernels_under(pids: set[int]) -> list[psutil.Process]:
    found = []
    for pid in pids:
        try:
            found += [p for p in psutil.Process(pid).children(recursive=True) if "ipykernel" in " ".join(p.cmdline())]
        except psutil.NoSuchProcess:
            pass
    return found


def test_grids_expand_to_parameter_sets():
    assert expand_grid({"alpha": [0.1, 0.5], "region": ["eu", "us"]}) == [
        {"alpha": 0.1, "region": "eu"}, {"alpha": 0.1, "region": "us"}, {"alpha": 0.5, "region": "eu"}, {"alpha": 0.5, "region": "us"}]
    assert expand_grid({"alpha": 0.3, "n": [1, 2]}) == [{"alpha": 0.3, "n": 1}, {"alpha": 0.3, "n": 2}]  # a single value: a list of one
    assert expand_grid([{"alpha": 1}, {"region": "us"}]) == [{"alpha": 1}, {"region": "us"}]  # explicit sets as they are


def _worker_state(dask_worker) -> dict:
    import sys

    import dask.config

    worker = dask_worker
    return {"profile": dask.config.get("distributed.worker.profile.enabled"), "preloaded": "papermill.execute" in sys.modules,
            "rfc3987_blocked": "rfc3987_syntax" in sys.modules and sys.modules["rfc3987_syntax"] is None,
            "memory_limit": worker.memory_manager.memory_limit, "nthreads": worker.state.nthreads}


async def test_a_sweeps_own_cluster_is_quiet_and_preloaded(cluster):
    """The LocalCluster a sweep starts: no Dask profiler or memory limit, the children's imports done as workers start.
    (Before the test that kills a worker: the nanny's replacement does not keep the profiler off.)"""
    from distributed import Client

    async with Client(cluster.scheduler_address, asynchronous=True) as client:
        states = list((await client.run(_worker_state)).values())
    assert states == [{"profile": False, "preloaded": True, "rfc3987_blocked": True, "memory_limit": None, "nthreads": 1}] * 2
    assert cluster.scheduler.periodic_callbacks["tick"].callback_time == 1000  # ms: not every 20 ms


async def test_sweep_runs_children_retries_failures_and_compares(cluster, settings, sweep_nb, tmp_path):
    updates = []
    outcome = await execute_batch(sweep_nb, {"alpha": [0.1, 0.5], "region": ["us"]}, cluster=cluster.scheduler_address,
                                  retries=1, settings=settings, on_child=updates.append)
    run = outcome.run
    assert (run.kind, run.status) == ("batch", "failed")
    # the batch's error names the most common child error and what to do next
    assert run.error.startswith("1 of 2 children did not succeed (1 failed, 1 succeeded); most common error (1 child): cell "), run.error
    assert "ValueError: no model for us" in run.error and "; hint: open a failed child's page" in run.error
    ok, failed = outcome.children
    assert (ok.status, ok.params, failed.status, failed.params) == ("succeeded", {"alpha": 0.1, "region": "us"}, "failed",
                                                                     {"alpha": 0.5, "region": "us"})
    assert "no model for us" in failed.error
    assert [u.attempt for u in updates if u.run_id == failed.id] == [1, 2] and updates[-1].done == 2  # tried again once, then recorded
    with Store.open(settings=settings) as store:
        assert "attempt_failed" in [e.type for e in store.events(failed.id)]
        kinds = sorted(a.kind for a in store.list_artifacts(run_id=ok.id).items)
        assert kinds == ["file", "json", "notebook"]  # out.txt (written in the notebook's folder), the record, the notebook
        assert ok.finished > ok.started and all(c.parent_id == run.id and c.kind == "batch-child" for c in outcome.children)
        table = batch_table(store, run.id)
        assert table.columns == ["run_id", "alpha", "region", "status", "seconds", "score", "error"]
        assert [(r["alpha"], r["status"], r.get("score")) for r in table.rows] == [(0.1, "succeeded", pytest.approx(0.3)), (0.5, "failed", None)]
        assert table.format().splitlines()[0].split() == ["RUN_ID", "alpha", "region", "STATUS", "SECONDS", "score", "ERROR"]
        saved = save_table(store, table, "csv", tmp_path / "cmp.csv")
        assert store.read_bytes(saved.id).decode().splitlines()[0] == "run_id,alpha,region,status,seconds,score,error"
    await _no_kernels_left(cluster)  # the batch's pools are gone with it


async def test_bad_grids_and_addresses_fail_before_any_run(settings, sweep_nb, tmp_path):
    for grid, message in (({}, "names no parameters"), ([], "empty list"), ({"alpha": []}, "empty list of values"),
                          ({"alpha": [1], "beta": [2]}, "has no parameter 'beta'"), ({"alpha": ["x"]}, "takes a float"),
                          ({"alpah": [1]}, r"has no parameter 'alpah' \(did you mean 'alpha'\?\); its parameters: alpha, region")):
        with pytest.raises(DsagentError, match=message):
            await execute_batch(sweep_nb, grid, settings=settings)
    with pytest.raises(DsagentError, match="makes 3 runs, more than batch_confirm_above"):
        await execute_batch(sweep_nb, {"alpha": [1.0, 2.0, 3.0]}, settings=settings.replace(batch_confirm_above=2), confirm=lambda n: False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there
    started = time.monotonic()
    with pytest.raises(DsagentError, match=f"cannot reach the Dask scheduler at tcp://127.0.0.1:{port} within 1 s"):
        await execute_batch(sweep_nb, {"alpha": [1.0]}, cluster=f"tcp://127.0.0.1:{port}", settings=settings.replace(batch_connect_timeout=1))
    assert time.monotonic() - started < 10
    with Store.open(settings=settings) as store:
        assert store.list_runs().items == []


def _marker_nb(tmp_path: Path) -> Path:
    """Writes its kernel's parent (the Dask worker) to a marker file, then sleeps on the first attempt only."""
    return write_notebook(tmp_path / "slow.ipynb", "import os, time\nif not os.path.exists(marker + str(i)):\n"
                          "    open(marker + str(i), 'w').write(str(os.getppid()))\n    time.sleep(60)",
                          params=f"marker = {str(tmp_path / 'started-')!r}\ni = 0")


async def _wait_for(path_glob: Path, count: int, timeout: float = 60) -> list[Path]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = sorted(path_glob.parent.glob(path_glob.name))
        if len(found) >= count:
            return found
        await asyncio.sleep(0.1)
    raise AssertionError(f"only {len(found)} of {count} children started")


async def test_cancel_ends_children_cancelled_and_leaves_no_kernels_or_tasks(cluster, settings, tmp_path):
    from distributed import Client

    nb = _marker_nb(tmp_path)
    task = asyncio.ensure_future(execute_batch(nb, {"i": [1, 2, 3]}, cluster=cluster.scheduler_address, settings=settings))
    await _wait_for(tmp_path / "started-*", 2)  # two children run (one per worker), the third waits
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    with Store.open(settings=settings) as store:
        batch = store.list_runs(kind="batch").items[0]
        children = store.list_runs(parent_id=batch.id).items
        assert batch.status == "cancelled" and sorted(c.status for c in children) == ["cancelled"] * 3
        partial = [a for c in children for a in store.list_artifacts(run_id=c.id, kind="notebook").items]
        assert len(partial) == 2  # the running ones kept their partial notebook
    await _no_kernels_left(cluster)
    async with Client(cluster.scheduler_address, asynchronous=True) as client:
        assert not any((await client.processing()).values())


async def test_a_killed_worker_does_not_stop_the_batch(cluster, settings, tmp_path):
    nb = _marker_nb(tmp_path)
    task = asyncio.ensure_future(execute_batch(nb, {"i": [1]}, cluster=cluster.scheduler_address, settings=settings, retries=1))
    await _wait_for(tmp_path / "started-*", 1)
    # the Dask worker process running the child, mid-task (not the kernel's parent: a forked kernel's parent
    # is the fork server's template, and killing that left the child sleeping its full minute)
    from distributed import Client

    async with Client(cluster.scheduler_address, asynchronous=True) as client:
        busy = [address for address, keys in (await client.processing()).items() if keys]
        pids = await client.run(os.getpid, workers=busy)
    assert len(busy) == 1, busy
    os.kill(pids[busy[0]], signal.SIGKILL)
    outcome = await asyncio.wait_for(task, 120)
    # Dask runs the task again on a living worker (or we retry it); the second attempt skips the sleep
    assert [c.status for c in outcome.children] == ["succeeded"] and outcome.run.status == "succeeded"


def test_cli_sweep_and_compare(cluster, workspace_home, sweep_nb, tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text("regoin: [eu]\n")
    typo = run_cli(workspace_home, "batch", str(sweep_nb), "--grid", str(grid), "--cluster", cluster.scheduler_address)
    assert typo.returncode == 2 and "no parameter 'regoin' (did you mean 'region'?)" in typo.stderr, typo.stderr
    grid.write_text("- {alpha: 0.2, region: eu}\n- {alpha: 0.4, region: eu}\n")
    done = run_cli(workspace_home, "batch", str(sweep_nb), "--grid", str(grid), "--cluster", cluster.scheduler_address)
    assert done.returncode == 0, done.stderr
    assert "child 2/2" in done.stderr and "succeeded" in done.stdout
    batch_id = int(done.stdout.split()[2])
    shown = run_cli(workspace_home, "batch", "compare", str(batch_id), "--parquet", str(tmp_path / "t.parquet"), "--json")
    data = json.loads(shown.stdout)
    assert [r["score"] for r in data["rows"]] == [0.4, 0.8] and (tmp_path / "t.parquet").stat().st_size > 0


async def test_a_scheduled_batch_fires_as_a_sweep(cluster, settings, sweep_nb, tmp_path):
    """A schedule whose target is a batch, fired by the scheduler at its cron time (a controllable clock)."""
    from dataclasses import replace
    from datetime import datetime, timezone

    from dsagent.runs.schedule_spec import make_schedule
    from dsagent.runs.scheduler import Scheduler

    grid = tmp_path / "grid.yaml"
    grid.write_text("alpha: [0.1, 0.2]\nregion: [eu]\n")
    schedule = make_schedule("nightly-sweep", "0 2 * * *", batch=sweep_nb, grid=grid)
    # the module's cluster instead of a LocalCluster per firing (a target may name a Dask address)
    schedule = replace(schedule, target={**schedule.target, "cluster": cluster.scheduler_address})
    now = [datetime(2026, 3, 2, 1, 59, 30, tzinfo=timezone.utc)]
    with Store.open(settings=settings) as store:
        store.add_schedule(schedule)
        scheduler = Scheduler(settings, store=store, clock=lambda: now[0])
        assert await scheduler.tick() == []
        now[0] = datetime(2026, 3, 2, 2, 0, 1, tzinfo=timezone.utc)
        assert [f.schedule for f in await scheduler.tick()] == ["nightly-sweep"]
        (run,) = await scheduler.wait_idle()
        await scheduler.stop()
        assert (run.kind, run.status, run.schedule_id) == ("batch", "succeeded", "nightly-sweep")
        assert store.get_schedule("nightly-sweep").last_run_id == run.id
        assert [r["score"] for r in batch_table(store, run.id).rows] == [pytest.approx(0.2), pytest.approx(0.4)]
    await _no_kernels_left(cluster)


async def test_a_killed_caller_keeps_every_child_it_wrote_and_records_the_rest_failed(cluster, workspace_home, tmp_path):
    """Group commit and kill -9: a child is in the store whole (notebook, events, status) or not at all; a child the
    caller had not written yet is recorded failed by the next store open (not re-run)."""
    from distributed import Client

    nb = write_notebook(tmp_path / "steps.ipynb", "import time, dsagent\ntime.sleep(0.2)\ndsagent.record('twice', 2 * i)", params="i = 0")
    grid = tmp_path / "grid.yaml"
    grid.write_text("i: [1, 2, 3, 4, 5, 6, 7, 8]\n")
    env = {**cli_env(workspace_home), "DSAGENT_BATCH_WRITE_DELAY": "0.3"}
    caller = subprocess.Popen([str(BIN / "dsagent"), "batch", str(nb), "--grid", str(grid), "--cluster", cluster.scheduler_address, "--retries", "0"],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    settings = Settings(home=str(workspace_home))
    try:
        deadline = time.monotonic() + 90
        written: list = []
        while len(written) < 2 and time.monotonic() < deadline and caller.poll() is None:
            await asyncio.sleep(0.1)
            with Store.open(settings=settings) as store:
                written = [r.id for r in store.list_runs(kind="batch-child", status="succeeded").items]
        assert caller.poll() is None and len(written) >= 2, "the sweep ended (or never wrote) before it could be killed"
        os.kill(caller.pid, signal.SIGKILL)
        caller.wait()
        with Store.open(settings=settings) as store:  # its setup reaps the dead caller's runs
            batch = store.list_runs(kind="batch").items[0]
            children = store.list_runs(parent_id=batch.id, limit=50).items
            assert len(children) == 8 and batch.status == "failed"
            assert set(written) <= {c.id for c in children if c.status == "succeeded"}  # nothing committed is lost
            for child in children:
                if child.status == "succeeded":
                    kinds = sorted(a.kind for a in store.list_artifacts(run_id=child.id).items)
                    events = [e.type for e in store.events(child.id)]
                    assert kinds == ["json", "notebook"] and "record" in events and events[-1] == "status", (child, kinds, events)
                else:
                    assert child.status == "failed" and "ended without finishing it" in child.error, child
    finally:
        if caller.poll() is None:
            caller.kill()
        # the dead caller never removed its kernel pools from the workers (a LocalCluster of its own would have died with it)
        async with Client(cluster.scheduler_address, asynchronous=True) as client:
            names = await client.run(lambda dask_worker: [n for n in dask_worker.plugins if n.startswith("dsagent-kernels")])
            for name in {n for found in names.values() for n in found}:
                await client.unregister_worker_plugin(name)
    await _no_kernels_left(cluster)



SHIPPED = Path(__file__).resolve().parents[2] / "notebooks"
# one swept parameter per shipped notebook (the README's sweep example for model_fit)
SHIPPED_GRIDS = {
    "sales_cohorts.ipynb": "top_n: [2, 4]\n",
    "energy_timeseries.ipynb": "resample: [D, W]\n",
}
README_SWEEP = "model: [ridge, lasso]\nalpha: [0.1, 0.5, 1.0]\n"  # the README's example, run as printed there


@pytest.fixture
def shipped_copy(tmp_path: Path) -> Path:
    """notebooks/ as a user has it (a copy: the runs write their outputs next to the notebooks)."""
    return Path(shutil.copytree(SHIPPED, tmp_path / "notebooks", ignore=shutil.ignore_patterns(".dsagent", "*.py")))


@pytest.mark.timeout(300)  # a fail-safe for a loaded machine: three CLI processes, each sweep's kernel pools
def test_every_shipped_notebook_sweeps_from_the_cli(cluster, workspace_home, shipped_copy, tmp_path):
    """Relative data paths resolve as for ``dsagent run``: a LocalCluster's children run in the notebook's folder."""
    assert sorted(p.name for p in shipped_copy.glob("*.ipynb")) == sorted([*SHIPPED_GRIDS, "model_fit.ipynb"])
    for name, grid in SHIPPED_GRIDS.items():
        grid_file = tmp_path / f"{name}.yaml"
        grid_file.write_text(grid)
        done = run_cli(workspace_home, "batch", str(shipped_copy / name), "--grid", str(grid_file), "--cluster", cluster.scheduler_address,
                       timeout=300)
        assert done.returncode == 0, done.stderr
        assert "batch run" in done.stdout and "2 succeeded" in done.stdout, done.stdout
        assert " - INFO - " not in done.stderr and "distributed." not in done.stderr, done.stderr  # Dask at WARNING unless -v
    assert (shipped_copy / "cohort_retention.csv").exists()  # written where `dsagent run` writes it


@pytest.mark.timeout(300)  # a fail-safe for a loaded machine: a LocalCluster of its own and 6 children
def test_the_readmes_sweep_works_as_printed_and_dask_stays_quiet(workspace_home, shipped_copy, tmp_path):
    """Its own LocalCluster (no --cluster), as printed in the README; Dask's INFO logging stays off stderr."""
    (tmp_path / "grid.yaml").write_text(README_SWEEP)
    readme = Path(__file__).resolve().parents[2] / "README.md"
    assert f"printf '{README_SWEEP}' > grid.yaml".replace("\n", "\\n") in readme.read_text()
    done = subprocess.run([str(BIN / "dsagent"), "batch", str(shipped_copy / "model_fit.ipynb"), "--grid", "grid.yaml", "--max-parallel", "4",
                           "--retries", "1"], cwd=tmp_path, env=cli_env(workspace_home), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "6 succeeded" in done.stdout, done.stderr
    assert "INFO" not in done.stderr and len(done.stderr.splitlines()) == 7, done.stderr  # "batch run N: ..." and one line per child


async def test_children_get_the_referenced_files_when_the_workers_cannot_see_the_folder(cluster, settings, shipped_copy, monkeypatch):
    """A remote cluster's workers may not have the notebook's folder: its referenced sibling files go with each child,
    and more than batch_ship_max_bytes fails before launch naming the parameter. (A cluster on another machine cannot
    run here: only the workers' answer to "do you see this folder?" is replaced.)"""
    from dsagent.runs import batch_files

    async def blind(client, folder):
        return False

    monkeypatch.setattr(batch_files, "workers_see", blind)
    notebook = shipped_copy / "sales_cohorts.ipynb"
    assert set(batch_files.shipped_files(notebook, [{"top_n": 2}], 10**9)) == {"data/sales.csv"}
    outcome = await execute_batch(notebook, {"top_n": [2, 3]}, cluster=cluster.scheduler_address, settings=settings)
    assert [c.status for c in outcome.children] == ["succeeded", "succeeded"], [c.error for c in outcome.children]
    assert not (shipped_copy / "cohort_retention.csv").exists()  # the children ran in folders of their own

    with pytest.raises(DsagentError) as refused:
        await execute_batch(notebook, {"top_n": [2]}, cluster=cluster.scheduler_address, settings=settings.replace(batch_ship_max_bytes=1000))
    assert "'data_path'" in refused.value.message and "batch_ship_max_bytes (1000 bytes)" in refused.value.message
    assert "absolute path or a URL" in refused.value.hint
    with Store.open(settings=settings) as store:
        assert len(store.list_runs(kind="batch", limit=10).items) == 1  # the refused sweep made no run


def test_a_sweeps_workers_drop_only_the_heartbeat_that_meets_the_closing_scheduler(caplog):
    """make test once saw that heartbeat's ERROR traceback on `dsagent batch`'s stderr after 6 children succeeded.
    The filter matches the message as this Dask version logs it, and lets the worker's other errors through."""
    import inspect
    import logging

    import distributed.worker

    from dsagent.runs import batch_preload

    assert 'logger.exception("Failed to communicate with scheduler during heartbeat.")' in inspect.getsource(distributed.worker.Worker.heartbeat)
    worker_log = logging.getLogger("distributed.worker")
    assert batch_preload._not_the_shutdown_heartbeat in worker_log.filters
    with caplog.at_level(logging.ERROR, logger="distributed.worker"):
        try:
            raise OSError("Stream is closed")
        except OSError:
            worker_log.exception("Failed to communicate with scheduler during heartbeat.")
            worker_log.exception("Compute Failed")
    assert [r.getMessage() for r in caplog.records] == ["Compute Failed"]
