"""The scheduler inside ``dsagent serve``: the same ``Scheduler`` as ``dsagent scheduler``, on a thread of its own.

A firing runs kernels, papermill, an agent or a whole Dask sweep; on the
Tornado event loop that serves the pages it would stall every page for as long
as a cell awaits or a store write blocks. So the scheduler gets its own thread
and asyncio loop, and pages only ever hand it work (``run_now``) or read
what it wrote through the store.

Signals stay with the main thread: ``dsagent serve``'s SIGTERM/SIGINT stop the
Tornado loop, and its shutdown calls ``stop()``, which cancels the running
firings (their runs end ``cancelled``, their kernels are shut down, a sweep's
Dask tasks are cancelled) and gives the lease back before the process exits.
Recorders on this thread never touch signal handlers (they only do on the main
thread), and ``CALLER_HANDLES_SIGTERM`` is set here as well, as in
``dsagent scheduler``, so that stays true if that rule ever changes.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import uuid
from typing import TYPE_CHECKING, Any

from dsagent.errors import DsagentError
from dsagent.settings import Settings

if TYPE_CHECKING:
    from dsagent.artifacts.models import Run
    from dsagent.runs.scheduler import Scheduler

__all__ = ["OWNER_PREFIX", "DashboardScheduler"]

log = logging.getLogger("dsagent.scheduler")

#: lease owners of schedulers inside a dashboard start with this (``dsagent scheduler``'s with "scheduler-")
OWNER_PREFIX = "dashboard-"


class DashboardScheduler:
    """Starts, feeds and stops one ``Scheduler`` on a background thread's event loop."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.owner = f"{OWNER_PREFIX}{uuid.uuid4().hex[:8]}"
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="dsagent-scheduler", daemon=True)
        self.scheduler: Scheduler | None = None

    def start(self, timeout: float = 60) -> None:
        """Start the thread and the scheduler (its store opened, first tick under way)."""
        self._thread.start()
        self._call(self._start(), timeout)

    async def _start(self) -> None:
        from dsagent.artifacts.recorder import CALLER_HANDLES_SIGTERM
        from dsagent.runs.scheduler import Scheduler

        # set in this task's context: the loop task and every firing task copy it
        CALLER_HANDLES_SIGTERM.set(True)
        self.scheduler = Scheduler(self.settings, owner=self.owner)
        await self.scheduler.start()

    def run_now(self, name: str, user: str = "anonymous") -> concurrent.futures.Future[Run | None]:
        """Fire schedule ``name`` now on the scheduler's loop (the lease is not needed, as with ``schedule run-now``).

        Refused with ``DsagentError`` when a run of it is still going and its overlap is ``skip``. The future ends
        with the run (None when none could start; the reason is in the log)."""
        return asyncio.run_coroutine_threadsafe(self._run_now(name, user), self._loop)

    async def _run_now(self, name: str, user: str) -> Run | None:
        assert self.scheduler is not None
        store = self.scheduler.store
        schedule = await asyncio.to_thread(store.get_schedule, name)
        active = await asyncio.to_thread(store.active_schedule_runs, name)
        if active and schedule.overlap == "skip":
            raise DsagentError(f"schedule {name} has run {active[0]} still running", hint="wait for it to end, or set its overlap to queue",
                               reason="busy")
        firing = self.scheduler.launch(schedule, launched_by={"user": user, "via": "dashboard"})
        return await firing.task

    def cancel_firing(self, name: str, timeout: float = 10) -> bool:
        """Cancel schedule ``name``'s running firing (a blocking call: not on an event loop); False if none runs here."""
        if self.scheduler is None or not self._thread.is_alive():
            return False

        async def cancel() -> bool:
            assert self.scheduler is not None
            return self.scheduler.cancel_firing(name)
        return bool(self._call(cancel(), timeout))

    def stop(self, timeout: float = 60) -> None:
        """Cancel running firings (runs end cancelled, kernels down), release the lease, end the thread."""
        if not self._thread.is_alive():
            return
        try:
            if self.scheduler is not None:
                self._call(self.scheduler.stop(), timeout)
        except Exception:  # still end the thread: the process is going away
            log.warning("the dashboard's scheduler did not stop cleanly", exc_info=True)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    def _call(self, coroutine: Any, timeout: float) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)
