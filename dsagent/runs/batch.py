"""Batch sweeps: one notebook over a grid of parameters, the children run on Dask, results in the store.

``run_batch("report.ipynb", {"alpha": [0.1, 0.5], "region": ["eu", "us"]})``
makes one ``batch`` run and one ``batch-child`` run per parameter set (the
product of the lists, or an explicit list of sets). The children run on a
Dask cluster: a ``LocalCluster`` of worker processes by default, or the
scheduler at ``cluster="tcp://host:8786"`` (dask-kubernetes, dask-jobqueue,
...). Each worker keeps a warm kernel pool (``batch_worker.KernelPoolPlugin``);
a task receives the notebook's bytes and returns the executed notebook and
captured artifacts as a journal; only this process writes the store, the
results of children that finish close together in one transaction
(``batch_writer.GroupWriter``).

Failures: a failed child (a cell raised, its kernel or its Dask worker died)
is tried again up to ``retries`` times, then recorded failed with the reason;
the others go on. Cancelling (Ctrl-C, SIGTERM, the caller's task cancelled)
cancels the running children on their workers (their runs end ``cancelled``
with the partial notebook, their kernels are shut down), drops the queued
tasks and marks the rest ``cancelled``.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, AsyncIterator, Callable, Mapping, Sequence

from dsagent.errors import DsagentError
from dsagent.settings import Settings
from dsagent.workspace import Workspace

if TYPE_CHECKING:
    from dsagent.artifacts.models import Run
    from dsagent.artifacts.store import Store
    from dsagent.runs.batch_worker import ChildResult, ChildSpec

__all__ = ["run_batch", "execute_batch", "expand_grid", "load_grid", "check_parameter_sets", "BatchOutcome", "ChildUpdate"]

log = logging.getLogger(__name__)

Grid = Mapping[str, Any] | Sequence[Mapping[str, Any]]


def expand_grid(grid: Grid) -> list[dict[str, Any]]:
    """Parameter sets of a grid: a mapping of lists gives their product (a single value counts as a list of one),
    a list of mappings is taken as it is. An empty grid is an error."""
    if isinstance(grid, Mapping):
        if not grid:
            raise _bad_grid("the grid names no parameters")
        names = [str(k) for k in grid]
        values = [list(v) if isinstance(v, (list, tuple)) else [v] for v in grid.values()]
        empty = [n for n, v in zip(names, values) if not v]
        if empty:
            raise _bad_grid(f"parameter {empty[0]!r} has an empty list of values, so the grid has no parameter sets")
        return [dict(zip(names, combo)) for combo in itertools.product(*values)]
    if isinstance(grid, (list, tuple)):
        if not grid:
            raise _bad_grid("the grid is an empty list of parameter sets")
        bad = [i for i, item in enumerate(grid) if not isinstance(item, Mapping)]
        if bad:
            raise _bad_grid(f"item {bad[0] + 1} of the list is a {type(grid[bad[0]]).__name__}, not a mapping of parameters")
        return [dict(item) for item in grid]
    raise _bad_grid(f"a grid is a mapping of lists or a list of mappings, not a {type(grid).__name__}")


def _bad_grid(why: str) -> DsagentError:
    return DsagentError(f"bad grid: {why}", hint="write it as  alpha: [0.1, 0.5]  lines (the product), or as a list of  - {alpha: 0.1}  sets",
                        reason="bad_grid")


def load_grid(path: str | Path) -> list[dict[str, Any]]:
    """Parameter sets from a YAML (or JSON) grid file."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise DsagentError(f"cannot read the grid {path}: {exc}", hint="pass a readable YAML file", reason="bad_grid") from None
    if data is None:
        raise _bad_grid(f"{path} is empty")
    return expand_grid(data)


def check_parameter_sets(notebook: Path, kernel: str, sets: Sequence[Mapping[str, Any]], *, allow_unknown: bool = False) -> None:
    """Every name must be a parameter of the notebook (unless ``allow_unknown``) and every value of its type (before anything runs)."""
    from dsagent.runs.notebook_input import notebook_parameters, prepare_notebook, unknown_parameters_error

    declared = [p["name"] for p in notebook_parameters(notebook)]
    unknown = sorted({name for s in sets for name in s if name not in declared})
    if unknown and not allow_unknown:
        raise unknown_parameters_error(notebook, unknown, declared)
    seen: set[str] = set()
    for params in sets:  # types: each distinct value once
        key = repr(sorted((k, repr(v)) for k, v in params.items()))
        if key not in seen:
            seen.add(key)
            prepare_notebook(notebook, kernel, params, allow_unknown=allow_unknown)


@dataclass(frozen=True)
class ChildUpdate:
    """Progress of a sweep: a child finished an attempt (``retrying`` if another follows)."""

    run_id: int
    index: int  # 0-based position in the grid
    total: int
    done: int  # children finished so far
    status: str
    attempt: int
    seconds: float
    error: str | None = None
    retrying: bool = False


@dataclass
class BatchOutcome:
    """The finished batch run, its children's final states and counts."""

    run: "Run"
    children: list["Run"] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    store_seconds: float = 0.0  # what writing the children's results cost this process (bench/batch.py reports it)
    store_groups: int = 0  # transactions they took (results that arrive close together share one)


async def run_batch(notebook: str | Path, grid: Grid | str | Path, **options: Any) -> "Run":
    """Run ``notebook`` once per parameter set of ``grid`` on Dask; the finished ``batch`` run (see ``execute_batch``)."""
    return (await execute_batch(notebook, grid, **options)).run


async def execute_batch(
    notebook: str | Path,
    grid: Grid | str | Path,
    *,
    backend: str | None = None,
    cluster: str | None = None,
    workers: int | None = None,
    max_parallel: int | None = None,
    retries: int | None = None,
    timeout: float | None = None,
    kernel_name: str | None = None,
    settings: Settings | None = None,
    store: "Store | None" = None,
    title: str | None = None,
    schedule_id: str | None = None,
    confirm: Callable[[int], bool] | bool = False,
    on_start: Callable[["Run", list["Run"]], None] | None = None,
    on_child: Callable[[ChildUpdate], None] | None = None,
    launched: Mapping[str, Any] | None = None,
    allow_unknown_parameters: bool = False,
) -> BatchOutcome:
    """A sweep as a recorded ``batch`` run with one ``batch-child`` per parameter set.

    ``grid``: parameter sets (see ``expand_grid``) or a YAML file. ``cluster``:
    ``"local"``/None for a LocalCluster of ``workers`` processes (setting
    ``batch_workers``), or a Dask scheduler address. ``max_parallel``: children
    in flight at once (default: the cluster's threads plus one waiting per worker). ``retries``: further
    attempts of a failed child (setting ``batch_retries``). ``confirm``: True, or
    a callable asked with the count, to run more than ``batch_confirm_above``
    children. ``launched``: who started it (a ``launched`` event on the batch run). A grid name the notebook does
    not declare is an error unless ``allow_unknown_parameters`` (then injected, as papermill does).
    Bad input raises ``DsagentError`` before any run exists.
    """
    from dsagent.runs.notebook_cells import notebook_kernel_name
    from dsagent.runs.notebook_input import peek_notebook

    settings = settings or Settings()
    path = Path(notebook).resolve()
    kernel = notebook_kernel_name(peek_notebook(path), kernel_name, path=str(path))
    sets = load_grid(grid) if isinstance(grid, (str, Path)) else expand_grid(grid)
    limit = settings.batch_confirm_above
    if len(sets) > limit and not (confirm is True or (callable(confirm) and confirm(len(sets)))):
        raise DsagentError(f"the grid makes {len(sets)} runs, more than batch_confirm_above ({limit})",
                           hint="confirm with --yes (confirm=True), or make the grid smaller", reason="too_large", count=len(sets))
    await asyncio.to_thread(check_parameter_sets, path, kernel, sets, allow_unknown=allow_unknown_parameters)
    log.info("batch: %d parameter sets checked", len(sets))
    sweep = _Sweep(path, kernel, sets, settings, backend or settings.backend, retries if retries is not None else settings.batch_retries,
                   timeout, on_child)
    sweep.allow_unknown = allow_unknown_parameters
    own_store = store is None
    if store is None:
        from dsagent.artifacts.store import Store

        store = Store(settings=settings)
        await asyncio.to_thread(store.setup)
    try:
        async with _dask_client(cluster, settings, workers) as client:
            await sweep.place(client)
            return await sweep.run(client, store, max_parallel, title, schedule_id, cluster or "local", on_start, launched)
    finally:
        if own_store:
            store.close()


#: Dask settings of a sweep's own LocalCluster. Its defaults suit a long-lived cluster watched on Dask's dashboard:
#: every server (the scheduler and the nannies in this process, each worker) ticked every 20 ms to detect a blocked
#: event loop, sampled its own stacks every 10 ms (the dashboard's profile) and read system metrics every 0.5 s.
#: Idle, that was ~120 ms of CPU per second for 2 workers, ~25 ms per child at 5 children/s; these make it ~15.
LOCAL_CLUSTER_CONFIG = {
    "distributed.admin.tick.interval": "1s",
    "distributed.admin.system-monitor.interval": "2s",
    "distributed.worker.profile.enabled": False,
}


def local_cluster_options(settings: Settings, workers: int | None = None) -> dict[str, Any]:
    """``LocalCluster`` arguments of a sweep's own cluster (start it inside ``dask.config.set(LOCAL_CLUSTER_CONFIG)``)."""
    return dict(
        n_workers=workers or settings.batch_workers, threads_per_worker=settings.batch_threads_per_worker, processes=True,
        # no Bokeh dashboard: no one is shown its link, and it cost an import of bokeh and
        # periodic updates in this process (the sweep's progress is dsagent's own)
        dashboard_address=None, silence_logs=logging.ERROR,
        # the scheduler's HTTP server (health, metrics) starts anyway, on 8787 unless told: with another cluster
        # there (a second sweep, Jupyter's) it warned "Port 8787 is already in use" on every sweep's stderr
        scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
        # no memory limit: a child's memory is its kernel's, a process of its own that
        # the worker's limit never saw; the limit only cost a monitor every 100 ms
        memory_limit=0, preload=["dsagent.runs.batch_preload"],
        env={"DSAGENT_HOME": str(Workspace.from_settings(settings).home)},  # the kernels' folders and logs go in this workspace
    )


@asynccontextmanager
async def _dask_client(cluster: str | None, settings: Settings, workers: int | None) -> AsyncIterator[Any]:
    """A Client of a new LocalCluster (closed afterwards) or of the scheduler at ``cluster``."""
    import dask.config
    from distributed import Client, LocalCluster

    _quiet_dask()
    if cluster in (None, "", "local"):
        with dask.config.set(LOCAL_CLUSTER_CONFIG):  # read as the scheduler and nannies start; nannies pass it to workers
            local = await LocalCluster(asynchronous=True, **local_cluster_options(settings, workers))
        log.info("batch: LocalCluster of %d workers started", len(local.workers))
        try:
            async with Client(local, asynchronous=True) as client:
                yield client
        finally:
            await local.close()
        return
    wait = settings.batch_connect_timeout
    try:
        client = await asyncio.wait_for(Client(cluster, asynchronous=True, timeout=wait), wait + 2)
    except (OSError, asyncio.TimeoutError, ValueError) as exc:
        raise DsagentError(f"cannot reach the Dask scheduler at {cluster} within {wait:g} s: {exc or type(exc).__name__}",
                           hint="check the address (tcp://HOST:8786) and that the scheduler runs, or use --cluster local",
                           reason="unreachable", address=cluster) from None
    try:
        yield client
    finally:
        await client.close()


def _quiet_dask() -> None:
    """Dask's own INFO lines (~40 per sweep: scheduler, nannies, clients) only when this process logs INFO (``-v``):
    importing distributed set its loggers to INFO, and they reach the root handler the CLI set up."""
    if logging.getLogger().getEffectiveLevel() > logging.INFO:
        logging.getLogger("distributed").setLevel(logging.WARNING)


class _Sweep:
    """One batch in flight: submits children, applies their journals, retries, cancels."""

    def __init__(self, path: Path, kernel: str, sets: list[dict[str, Any]], settings: Settings, backend: str, retries: int,
                 timeout: float | None, on_child: Callable[[ChildUpdate], None] | None) -> None:
        self.path, self.kernel, self.sets, self.settings = path, kernel, sets, settings
        self.backend, self.retries, self.timeout, self.on_child = backend, max(0, retries), timeout, on_child
        self.token = uuid.uuid4().hex[:12]
        self.plugin = f"dsagent-kernels-{self.token}"
        self.notebook = path.read_bytes()
        self.children: list["Run"] = []
        self.final: dict[int, "Run"] = {}
        self.started: dict[int, float] = {}
        self.folder: str | None = None  # where children run (batch_files.py)
        self.files: dict[str, bytes] = {}
        self.allow_unknown = False

    async def place(self, client: Any) -> None:
        """Children run in the notebook's folder if every worker sees it, else get its referenced files (or fail now)."""
        from dsagent.runs.batch_files import shipped_files, workers_see

        if await workers_see(client, self.path.parent):
            self.folder = str(self.path.parent)
            return
        self.files = await asyncio.to_thread(shipped_files, self.path, self.sets, self.settings.batch_ship_max_bytes)
        log.info("batch: the workers cannot see %s; %d referenced files go with each child", self.path.parent, len(self.files))

    async def run(self, client: Any, store: "Store", max_parallel: int | None, title: str | None, schedule_id: str | None,
                  cluster: str, on_start: Callable[["Run", list["Run"]], None] | None,
                  launched: Mapping[str, Any] | None = None) -> BatchOutcome:
        from dsagent.artifacts.recorder import RunRecorder
        from dsagent.runs.batch_worker import KernelPoolPlugin
        from dsagent.runs.batch_writer import GroupWriter

        params = {"notebook": str(self.path), "parameters": sorted({k for s in self.sets for k in s}), "children": len(self.sets),
                  "cluster": cluster, "retries": self.retries}
        async with RunRecorder(store, "batch", title=title or self.path.name, params=params, backend=self.backend,
                               schedule_id=schedule_id, launched=launched) as recorder:
            self.children = await asyncio.to_thread(store.create_children, recorder.run_id, self.sets, title=self.path.stem,
                                                    backend=self.backend)
            if on_start is not None:
                on_start(recorder.run, self.children)  # type: ignore[arg-type]
            overrides = {"backend": self.backend, "kernel_pool_replenish_delay": 0.0}
            await client.register_plugin(KernelPoolPlugin(self.plugin, self.backend, self.kernel, overrides), name=self.plugin)
            log.info("batch %s: kernel pools set up on the workers", recorder.run_id)
            self.writer = GroupWriter(store, self.settings.batch_write_delay)
            try:
                threads = await client.nthreads()
                # by default one child more per worker than it runs at once: it waits on the worker, which starts
                # it as soon as a thread frees, not after the result went to this process and a new task came back
                await self._drive(client, store, max_parallel or (sum(threads.values()) + len(threads)) or 1)
                await self.writer.close()
            except BaseException:
                await asyncio.shield(self._cancel(client, store, recorder.run_id))
                raise
            finally:
                await asyncio.shield(_quietly(client.unregister_worker_plugin(self.plugin)))
                log.info("batch %s: kernel pools removed", recorder.run_id)
            counts = _counts(self.final.values())
            failed = len(self.sets) - counts.get("succeeded", 0)
            await recorder.event("batch_finished", {"counts": counts})
            if failed:
                from dsagent.runs.batch_errors import batch_error

                await recorder.finish("failed", error=batch_error(self.final.values(), counts, len(self.sets)))
        children = [self.final.get(c.id, c) for c in self.children]
        return BatchOutcome(recorder.run, children, _counts(children), self.writer.seconds, self.writer.groups)  # type: ignore[arg-type]

    def _spec(self, index: int, attempt: int) -> "ChildSpec":
        from dsagent.runs.batch_worker import ChildSpec

        child = self.children[index]
        return ChildSpec(child.id, self.token, self.plugin, self.path.name, self.notebook, self.sets[index], self.timeout, attempt,
                         self.folder, self.files, self.allow_unknown)

    async def _drive(self, client: Any, store: "Store", parallel: int) -> None:
        from distributed import as_completed

        from dsagent.runs.batch_worker import run_child

        waiting = list(range(len(self.sets)))
        waiting.reverse()
        attempts: dict[int, int] = {}
        index_of: dict[Any, int] = {}
        self._inflight: dict[Any, int] = index_of
        queue = as_completed([])
        writer = self.writer

        def submit(index: int) -> None:
            attempts[index] = attempts.get(index, 0) + 1
            child = self.children[index]
            if attempts[index] == 1:  # marked running in the next group, not in a transaction of its own before the submit
                writer.add(child.id, [("status", "running", None, _now())])
            self.started[index] = time.monotonic()
            future = client.submit(run_child, self._spec(index, attempts[index]), key=f"dsagent-child-{child.id}-{attempts[index]}",
                                   pure=False, retries=0)
            index_of[future] = index
            queue.add(future)

        for _ in range(min(parallel, len(waiting))):
            submit(waiting.pop())
        while index_of:
            future = await _next(queue)
            index = index_of.pop(future)
            attempt = attempts[index]
            result = await self._result(future, index, attempt)
            retry = result.status != "succeeded" and attempt <= self.retries
            if retry:
                submit(index)
            elif waiting:
                submit(waiting.pop())  # the freed worker starts the next child before this one's results are written
            self._queue_result(result, index, attempt, retry)
        await writer.flush()

    async def _result(self, future: Any, index: int, attempt: int) -> "ChildResult":
        from dsagent.runs.batch_worker import ChildResult

        try:
            return await future
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the task never returned: its worker died (KilledWorker), lost, ...
            name = type(exc).__name__
            why = "its Dask worker died while running it" if name == "KilledWorker" else "the Dask task failed"
            return ChildResult(self.children[index].id, [], "failed", f"{why} ({name}: {exc})", attempt=attempt)

    def _queue_result(self, result: "ChildResult", index: int, attempt: int, retry: bool) -> None:
        """Hand an attempt's journal to the group writer; a retried attempt leaves only an event (its partial results are dropped)."""
        if retry:
            entries: list[Any] = [("events", [("attempt_failed", {"attempt": result.attempt, "error": result.error, "worker": result.worker},
                                                _now())], None, _now())]
            self.writer.add(result.run_id, entries, then=lambda run: self._report(index, result, attempt, True))
            return
        entries = list(result.entries)
        if not any(e[0] == "status" and e[1] in ("succeeded", "failed", "cancelled") for e in entries):
            entries.append(("status", result.status, result.error, _now()))  # the task died before its recorder could say

        def written(run: "Run") -> None:
            self.final[run.id] = run
            self._report(index, result, attempt, False)

        self.writer.add(result.run_id, entries, prepare=lambda e: self._keep_notebook(result.run_id, e), then=written)

    def _keep_notebook(self, run_id: int, journal: Sequence[Any]) -> list[Any]:
        """The executed notebook also goes to <workspace>/outputs/notebooks/, as ``dsagent run`` does (the worker's copy is gone)."""
        from dataclasses import replace

        folder = Workspace.from_settings(self.settings).outputs_dir / "notebooks"
        entries = []
        for kind, first, second, when in journal:
            if kind == "artifacts":
                items = []
                for item in first:
                    if item.kind == "notebook":
                        folder.mkdir(parents=True, exist_ok=True)
                        target = folder / f"{self.path.stem}-run{run_id}.ipynb"
                        target.write_bytes(item.data)
                        item = replace(item, name=target.name, metadata={**dict(item.metadata), "path": str(target), "source": str(self.path)})
                    items.append(item)
                first = items
            entries.append((kind, first, second, when))
        return entries

    def _report(self, index: int, result: "ChildResult", attempt: int, retry: bool) -> None:
        if self.on_child is None:
            return
        seconds = time.monotonic() - self.started.get(index, time.monotonic())
        self.on_child(ChildUpdate(result.run_id, index, len(self.sets), len(self.final), result.status, attempt, seconds, result.error, retry))

    async def _cancel(self, client: Any, store: "Store", batch_id: int) -> None:
        """Cancel running children on their workers (runs end ``cancelled``, kernels down), drop the rest."""
        from dsagent.runs.batch_worker import cancel_batch

        inflight = dict(getattr(self, "_inflight", {}))
        try:
            # the workers end their children's runs (partial notebooks kept) and stop the kernels before answering
            await asyncio.wait_for(client.run(cancel_batch, self.token), 2 * self.settings.batch_connect_timeout)
        except Exception:
            log.warning("could not reach every Dask worker to cancel batch %s", batch_id, exc_info=True)
        for future, index in inflight.items():
            try:
                result = await asyncio.wait_for(asyncio.shield(future), 5)
                if result.status == "cancelled":
                    self._queue_result(result, index, result.attempt, False)
            except BaseException:
                pass
        await _quietly(client.cancel(list(inflight)))
        try:
            await self.writer.close()  # what finished before the cancel, and the partial notebooks, are kept
        except Exception:
            log.warning("could not write the results of batch %s's finished children", batch_id, exc_info=True)
        await asyncio.to_thread(store.cancel_children, batch_id, "cancelled with its batch")


async def _next(queue: Any) -> Any:
    async for future in queue:
        return future
    raise RuntimeError("no Dask task left to wait for")


async def _quietly(awaitable: Any) -> None:
    try:
        await asyncio.wait_for(awaitable, 10)
    except Exception:
        log.debug("ignored", exc_info=True)


def _counts(runs: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for run in runs:
        counts[run.status] = counts.get(run.status, 0) + 1
    return counts


def _now() -> Any:
    from dsagent.artifacts.models import utcnow

    return utcnow()
