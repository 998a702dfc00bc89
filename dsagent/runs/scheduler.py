"""The scheduler: fires the workspace's cron schedules as ordinary runs, in its own process or inside another.

``dsagent scheduler`` runs one in its own long-lived process; ``dsagent serve``
can run the same object in-process::

    scheduler = Scheduler(settings)          # clock=... for tests
    await scheduler.start()                  # a background loop: one tick() per scheduler_tick seconds
    scheduler.holder                         # who fires the schedules (SchedulerLease): this process or another
    await scheduler.stop()                   # running firings are cancelled (their runs end cancelled)

Each ``tick()`` reads the schedules from the store (so edits, pauses and new
schedules count without a restart) and:

- takes or renews the workspace's scheduler lease; without it, it fires
  nothing (another process does; it takes over when that one's lease expires
  or its process is gone);
- fires a schedule whose ``next_fire`` has come, after claiming it with a
  compare-and-set in the store, so one firing is never fired twice;
- a firing while a run of the same schedule is still queued or running is
  skipped or queued (``overlap``); a queued firing starts when that run ends;
- a firing more than ``scheduler_misfire_grace`` seconds late (the scheduler
  was down) is skipped or run once to catch up (``misfire``), however many
  firings were missed.

A firing is a normal run (notebook, agent or batch) with the schedule's name in
``runs.schedule_id``. When it ends failed (or at all, with ``notify_on=always``)
the schedule's webhook (or ``schedule_webhook_url``) gets a JSON POST with run
id, status, error and a link; without a webhook a log line says it.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Callable

from dsagent.artifacts.models import utcnow
from dsagent.settings import Settings

if TYPE_CHECKING:
    from dsagent.artifacts.models import Run
    from dsagent.artifacts.schedules import Schedule, SchedulerLease
    from dsagent.artifacts.store import Store

__all__ = ["Scheduler", "Firing", "fire_schedule", "notify"]

log = logging.getLogger("dsagent.scheduler")


@dataclass
class Firing:
    """One firing started by a tick: which schedule, for which time, and its task (the run when it ends)."""

    schedule: str
    fire_time: datetime
    task: "asyncio.Task[Run | None]"


class Scheduler:
    """Fires due schedules of one workspace; ``tick()`` is one look, ``start()``/``stop()`` a loop of them."""

    def __init__(self, settings: Settings | None = None, *, store: "Store | None" = None, clock: Callable[[], datetime] | None = None,
                 owner: str | None = None) -> None:
        self.settings = settings or Settings()
        self.clock = clock or utcnow
        self.owner = owner or f"scheduler-{uuid.uuid4().hex[:8]}"
        self._store = store
        self._own_store = store is None
        self._running: dict[str, "asyncio.Task[Run | None]"] = {}
        self._loop_task: asyncio.Task[None] | None = None
        self.holder: "SchedulerLease | None" = None

    @property
    def store(self) -> "Store":
        if self._store is None:
            from dsagent.artifacts.store import Store

            self._store = Store(settings=self.settings)
            self._store.setup()  # marks runs of a killed scheduler failed: the schedule goes on
        return self._store

    @property
    def is_firing(self) -> bool:
        """True while this process holds the lease (it is the one that fires)."""
        return self.holder is not None and self.holder.owner == self.owner

    # -- the loop ------------------------------------------------------------

    async def start(self) -> None:
        await asyncio.to_thread(lambda: self.store)
        self._loop_task = asyncio.ensure_future(self._loop())

    async def _loop(self) -> None:
        while True:
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:  # a busy store, a bad row: say it and look again next tick
                log.exception("scheduler tick failed; trying again in %.1f s", self.settings.scheduler_tick)
            await asyncio.sleep(self.settings.scheduler_tick)

    async def stop(self) -> None:
        """Stop ticking, cancel running firings (their runs end cancelled), give the lease back."""
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
            self._loop_task = None
        running = list(self._running.values())
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        if self._store is not None:
            try:
                await asyncio.to_thread(self._store.release_scheduler_lease, self.owner)
            finally:
                if self._own_store:
                    self._store.close()
                    self._store = None

    def cancel_firing(self, name: str) -> bool:
        """Cancel the running firing of schedule ``name`` (its run ends cancelled); False if none runs here."""
        task = self._running.get(name)
        if task is None or task.done():
            return False
        task.cancel()
        return True

    async def wait_idle(self) -> list["Run | None"]:
        """Wait for the firings in flight (tests and run-now use it); their runs."""
        tasks = list(self._running.values())
        return list(await asyncio.gather(*tasks)) if tasks else []

    # -- one look ----------------------------------------------------------------

    async def tick(self) -> list[Firing]:
        """Renew the lease and start every firing that is due now; the firings started."""
        now = self.clock()
        store = await asyncio.to_thread(lambda: self.store)
        ttl = self.settings.scheduler_lease_seconds
        if self.is_firing and self.holder is not None and (self.holder.expires - now).total_seconds() > ttl / 2:
            held = self.holder  # renewed at half its life, not every tick: a write per tick would grow the WAL for nothing
        else:
            held = await asyncio.to_thread(store.acquire_scheduler_lease, self.owner, now, ttl)
        if self.holder is None or held.owner != self.holder.owner:
            who = "this process" if held.owner == self.owner else f"{held.owner} (pid {held.pid} on {held.host})"
            log.info("schedules are fired by %s", who)
        gained = held.owner == self.owner and (self.holder is None or self.holder.owner != self.owner)
        self.holder = held
        if not self.is_firing:
            return []
        if gained:  # the last holder may have been killed mid-run: its runs end failed, so they do not block their schedules
            await asyncio.to_thread(store.reap_dead_runs)
        fired = []
        for schedule in await asyncio.to_thread(self._all):
            if not schedule.paused:
                firing = await self._consider(schedule, now)
                if firing is not None:
                    fired.append(firing)
        return fired

    def _all(self) -> list["Schedule"]:
        found, cursor = [], None
        while True:
            page = self.store.list_schedules(limit=200, cursor=cursor)
            found.extend(page.items)
            if page.next_cursor is None:
                return found
            cursor = page.next_cursor

    async def _busy(self, s: "Schedule") -> bool:
        task = self._running.get(s.name)
        if task is not None and not task.done():
            return True
        return bool(await asyncio.to_thread(self.store.active_schedule_runs, s.name))

    async def _consider(self, s: "Schedule", now: datetime) -> Firing | None:
        from dsagent.runs.schedule_spec import next_fire_after

        store = self.store
        claim = asyncio.to_thread
        if s.next_fire is None:  # new, edited or resumed: the next firing counts from now
            await claim(store.claim_firing, s.name, s.version, None, next_fire_after(s.cron, s.timezone, now))
            return None
        if s.pending and not await self._busy(s) and await claim(store.take_pending_firing, s.name, s.version):
            log.info("schedule %s: starting the firing queued behind its last run", s.name)
            return self._launch(s, s.last_fire or now)
        if s.next_fire > now:
            return None
        upcoming = next_fire_after(s.cron, s.timezone, now)
        late = (now - s.next_fire).total_seconds() > self.settings.scheduler_misfire_grace
        if late and s.misfire == "skip":
            if await claim(store.claim_firing, s.name, s.version, s.next_fire, upcoming):
                log.warning("schedule %s: missed firing(s) since %s skipped (misfire=skip); next %s", s.name, s.next_fire, upcoming)
            return None
        if await self._busy(s):
            queue = s.overlap == "queue"
            if await claim(store.claim_firing, s.name, s.version, s.next_fire, upcoming, fired=s.next_fire, pending=True if queue else None):
                log.warning("schedule %s: firing of %s %s, its last run is still running (overlap=%s)", s.name, s.next_fire,
                            "queued" if queue else "skipped", s.overlap)
            return None
        if not await claim(store.claim_firing, s.name, s.version, s.next_fire, upcoming, fired=s.next_fire):
            return None  # another process claimed it, or the schedule was edited meanwhile
        if late:
            log.warning("schedule %s: firing of %s runs late, once, to catch up (misfire=run_once)", s.name, s.next_fire)
        return self._launch(s, s.next_fire)

    def launch(self, s: "Schedule", *, launched_by: dict[str, Any] | None = None) -> Firing:
        """Fire ``s`` now, outside its cron times and without the lease (run now); overlap is the caller's check.
        ``launched_by`` (user, via) becomes a ``launched`` event of the run."""
        return self._launch(s, self.clock(), launched_by)

    def _launch(self, s: "Schedule", fire_time: datetime, launched_by: dict[str, Any] | None = None) -> Firing:
        task = asyncio.ensure_future(fire_schedule(s, self.store, self.settings, fire_time=fire_time, launched_by=launched_by))
        self._running[s.name] = task
        task.add_done_callback(lambda t, name=s.name: self._running.pop(name, None) if self._running.get(name) is t else None)
        return Firing(s.name, fire_time, task)


async def fire_schedule(s: "Schedule", store: "Store", settings: Settings, *, fire_time: datetime | None = None,
                        launched_by: dict[str, Any] | None = None) -> "Run | None":
    """Run what ``s`` targets now, as a run with ``schedule_id = s.name``; then notify. The run (None if none started).

    ``launched_by``: who asked for this firing by hand (``{"user": ..., "via": "dashboard"}``), a ``launched`` event."""
    fire_time = fire_time or utcnow()
    started: dict[str, Any] = {}

    def on_run(run: "Run", *_: Any) -> None:
        started["run"] = run
        store.set_schedule_last_run(s.name, run.id)
        events: list[tuple[str, dict[str, Any]]] = [("schedule_fired", {"schedule": s.name, "fire_time": fire_time.isoformat()})]
        if launched_by:
            events.append(("launched", {**launched_by, "schedule": s.name}))
        store.append_events(run.id, events)

    log.info("schedule %s: firing (%s)", s.name, fire_time.isoformat())
    run: "Run | None" = None
    error: str | None = None
    try:
        run = await _execute(s, store, settings, on_run)
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # bad input found at firing time (a deleted notebook, ...): no run exists, say so
        error = f"{type(exc).__name__}: {exc}"
        run = started.get("run")
    finally:
        if run is None and "run" in started:
            run = await asyncio.to_thread(store.get_run, started["run"].id)
    await notify(s, run, error, settings)
    return run


async def _execute(s: "Schedule", store: "Store", settings: Settings, on_run: Callable[..., None]) -> "Run":
    target = s.target
    kind = target.get("kind")
    if kind == "agent":
        from dsagent.graphs.runner import execute_agent_run

        outcome = await execute_agent_run(target["question"], target.get("data", []), backend=target.get("backend"), settings=settings,
                                          store=store, schedule_id=s.name)
        await asyncio.to_thread(on_run, outcome.run)
        return outcome.run
    if kind == "batch":
        from dsagent.runs.batch import execute_batch

        batch = await execute_batch(target["notebook"], target["grid"], backend=target.get("backend"), cluster=target.get("cluster"),
                                    settings=settings, store=store, schedule_id=s.name, confirm=True, on_start=lambda run, _: on_run(run),
                                    allow_unknown_parameters=bool(target.get("allow_unknown_parameters")))
        return batch.run
    from dsagent.runs.notebook_run import execute_notebook_run

    outcome = await execute_notebook_run(target["notebook"], target.get("parameters") or {}, text_parameters=target.get("text_parameters"),
                                         backend=target.get("backend"), settings=settings, store=store,
                                         recorder_options={"schedule_id": s.name}, on_run=on_run,
                                         allow_unknown_parameters=bool(target.get("allow_unknown_parameters")))
    return outcome.run


def _link(run_id: int, settings: Settings) -> str:
    base = settings.schedule_link_base.rstrip("/")
    return f"{base}/runs/{run_id}" if base else f"dsagent runs show {run_id}"


async def notify(s: "Schedule", run: "Run | None", error: str | None, settings: Settings) -> None:
    """POST the outcome to the schedule's webhook (failures; everything with notify_on=always), else log it."""
    status = run.status if run is not None else "failed"
    error = error or (run.error if run is not None else None)
    ok = status == "succeeded"
    payload = {"schedule": s.name, "run_id": run.id if run else None, "status": status, "error": error,
               "link": _link(run.id, settings) if run else None}
    url = s.notify_url or settings.schedule_webhook_url
    if ok and s.notify_on != "always":
        log.info("schedule %s: run %s succeeded", s.name, payload["run_id"])
        return
    if not url:
        (log.info if ok else log.error)("schedule %s: run %s %s%s (no webhook set; --notify-url sets one)", s.name, payload["run_id"],
                                        status, f": {error}" if error else "")
        return
    import httpx

    try:
        async with httpx.AsyncClient(timeout=10) as client:
            response = await client.post(url, json=payload)
            response.raise_for_status()
    except httpx.HTTPError as exc:
        log.error("schedule %s: run %s %s, and the webhook %s failed: %s", s.name, payload["run_id"], status, url, exc)

