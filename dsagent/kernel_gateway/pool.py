"""A warm pool: N things started ahead of time, handed out once, replenished in the background.

Generic over what it holds (a started kernel for ``local`` and ``sandbox``).
An item is handed out at most once and never returns to the pool, so a
session never gets a kernel that someone else used.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Awaitable, Callable, Generic, TypeVar

__all__ = ["WarmPool"]

log = logging.getLogger(__name__)
T = TypeVar("T")


class WarmPool(Generic[T]):
    """Keeps ``size`` items started; ``get()`` takes the oldest, starting one if none is ready."""

    def __init__(
        self,
        start: Callable[[], Awaitable[T]],
        stop: Callable[[T], Awaitable[None]],
        size: int,
        healthy: Callable[[T], Awaitable[bool]] | None = None,
        replenish_delay: float = 0.0,
    ) -> None:
        self._start = start
        self._stop = stop
        self._healthy = healthy
        self.size = max(0, size)
        # starting a kernel takes a core for ~1 s; starting the replacement at
        # once would slow the first cells of the session just handed out ~10x
        self.replenish_delay = replenish_delay
        self._refill: asyncio.TimerHandle | None = None
        self._pending: deque[asyncio.Task[T]] = deque()
        self._closed = False

    @property
    def ready(self) -> int:
        """How many items are started and waiting."""
        return sum(1 for t in self._pending if t.done() and not t.cancelled() and t.exception() is None)

    def fill(self) -> None:
        """Start items in the background until ``size`` are ready or starting."""
        while not self._closed and len(self._pending) < self.size:
            self._pending.append(asyncio.ensure_future(self._start()))

    def _schedule_fill(self) -> None:
        if self.replenish_delay <= 0:
            self.fill()
        elif self._refill is None or self._refill.cancelled():
            loop = asyncio.get_running_loop()
            self._refill = loop.call_later(self.replenish_delay, self._delayed_fill)

    def _delayed_fill(self) -> None:
        self._refill = None
        self.fill()

    async def wait_ready(self) -> None:
        """Wait until the pool is full (used by benchmarks and the demo)."""
        self.fill()
        await asyncio.gather(*self._pending, return_exceptions=True)

    async def get(self) -> T:
        """A fresh item: a ready one, else the first one still starting, else a new one."""
        while self._pending:
            ready = next((t for t in self._pending if t.done()), None)
            task = ready or self._pending[0]
            self._pending.remove(task)
            self._schedule_fill()
            item = await task  # a failed start surfaces here, with its own message
            if self._healthy is None or await self._healthy(item):
                return item
            log.info("discarding a pooled item that is no longer healthy")
            await self._stop(item)
        item = await self._start()
        self._schedule_fill()
        return item

    async def aclose(self) -> None:
        """Stop every pooled item, including those still starting."""
        self._closed = True
        if self._refill is not None:
            self._refill.cancel()
        pending, self._pending = list(self._pending), deque()
        results = await asyncio.gather(*pending, return_exceptions=True)
        for result in results:
            if not isinstance(result, BaseException):
                await self._stop(result)
