"""The sweep's group commit: children's results that arrive close together go to the store in ONE transaction.

A child's journal used to cost the caller one transaction of ~30 statements,
and its ``running`` mark at submit another: ~100 ms of the caller's time per
child, on a 2-core machine a third of the CPU a child may take at 10
notebooks/s. ``GroupWriter`` collects what arrives (``add``) and writes it
with ``Store.apply_journals``: whatever came in while the last group was being
written, after waiting at most ``delay`` seconds (setting
``batch_write_delay``) for more. Nobody waits for a group: the caller submits
the next child as soon as a result arrives; a group only delays when the
store and the progress report show a child as done (by ``delay`` plus one
write).

Crash safety: a group is one transaction, so each child is written whole or
not at all. If the caller is killed (kill -9) before a child's group is
written, that child stays ``queued``/``running`` with the dead caller as its
owner, and the next ``Store.setup`` (any dsagent command) records it
``failed`` ("the process that ran it ... ended without finishing it"); it is
not re-run.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

if TYPE_CHECKING:
    from dsagent.artifacts.models import Run
    from dsagent.artifacts.store import Store

__all__ = ["GroupWriter"]

log = logging.getLogger(__name__)

#: a group is written at once when it holds this many writes (a flood of results after a slow store)
MAX_GROUP = 64


@dataclass
class _Write:
    run_id: int
    entries: Sequence[Any]
    prepare: Callable[[Sequence[Any]], Sequence[Any]] | None  # run in the writer's thread (file writes) before the SQL
    then: Callable[["Run"], None] | None  # on the loop, once the group is committed


class GroupWriter:
    """Writes ``(run id, journal entries)`` in groups, in the order added; see the module docstring."""

    def __init__(self, store: "Store", delay: float) -> None:
        self.store = store
        self.delay = max(0.0, delay)
        self.seconds = 0.0  # time spent writing (in the writer's thread)
        self.groups = 0
        self.writes = 0
        self._pending: list[_Write] = []
        self._wake = asyncio.Event()  # something was added
        self._now = asyncio.Event()  # write without waiting for more (flush, close, a full group)
        self._idle = asyncio.Event()  # nothing pending or being written
        self._idle.set()
        self._closing = False
        self._task: asyncio.Task[None] | None = None

    def add(self, run_id: int, entries: Sequence[Any], *, prepare: Callable[[Sequence[Any]], Sequence[Any]] | None = None,
            then: Callable[["Run"], None] | None = None) -> None:
        """Queue a run's entries; ``then(run)`` is called on this loop after they are committed."""
        self._raise_if_failed()
        self._pending.append(_Write(run_id, entries, prepare, then))
        self._idle.clear()
        if len(self._pending) >= MAX_GROUP:
            self._now.set()
        self._wake.set()
        if self._task is None or self._task.done():  # (after close: a last group, e.g. a cancel's partial results)
            self._task = asyncio.ensure_future(self._loop())

    async def flush(self) -> None:
        """Write everything added so far, now, and wait for it (and its ``then`` callbacks); a failed write raises here."""
        if self._task is None:
            return
        self._now.set()
        idle = asyncio.ensure_future(self._idle.wait())
        try:
            await asyncio.wait({idle, self._task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            idle.cancel()
        self._raise_if_failed()

    async def close(self) -> None:
        """Flush, then stop the writer."""
        self._closing = True
        self._now.set()
        self._wake.set()
        if self._task is not None:
            await asyncio.wait({self._task})
        self._raise_if_failed()

    def _raise_if_failed(self) -> None:
        task = self._task
        if task is not None and task.done() and not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]

    async def _loop(self) -> None:
        while True:
            if not self._pending:
                self._idle.set()
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            if self.delay and not self._now.is_set():
                try:  # let the results of children finishing about now join this group
                    await asyncio.wait_for(self._now.wait(), self.delay)
                except asyncio.TimeoutError:
                    pass
            if not self._closing:
                self._now.clear()
            group, self._pending = self._pending, []
            started = time.perf_counter()
            # shielded: a write that started finishes (and is reported) even if the loop's task is cancelled
            runs = await asyncio.shield(asyncio.to_thread(self._write, group))
            self.seconds += time.perf_counter() - started
            self.groups += 1
            self.writes += len(group)
            for write in group:
                if write.then is not None:
                    write.then(runs[write.run_id])

    def _write(self, group: list[_Write]) -> dict[int, "Run"]:
        writes = [(w.run_id, w.prepare(w.entries) if w.prepare is not None else w.entries) for w in group]
        return self.store.apply_journals(writes)
