"""What every page and route of one dashboard server shares: the store, settings, who is logged in.

Store calls block (they wait their turn at the workspace lock), so pages and
routes make them through ``ctx.read(...)``: a worker thread, never the event
loop, so a long lock wait slows one page's update and freezes nothing.
"""

from __future__ import annotations

import asyncio
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TypeVar

from dsagent.artifacts.store import Store
from dsagent.panel_app.auth import Credentials
from dsagent.settings import Settings

__all__ = ["AppContext"]

T = TypeVar("T")


@dataclass
class AppContext:
    """One per server; pages get it when they are built."""

    store: Store
    settings: Settings
    credentials: Credentials | None = None
    pid: int = field(default_factory=os.getpid)
    scheduler: Any = None  # a DashboardScheduler when this server fires the schedules (not --no-scheduler)
    executor: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(4, thread_name_prefix="dashboard-read"))
    #: per-server objects a feature starts on first use (the chat page's ChatHost); ``close`` shuts them down
    services: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def create(cls, settings: Settings, credentials: Credentials | None = None) -> "AppContext":
        # dashboard reads give up sooner than CLI writers: the page shows "busy" and retries
        read_settings = settings.replace(store_lock_timeout=settings.dashboard_lock_timeout)
        store = Store(settings=read_settings)
        store.setup()
        if credentials is not None:
            from dsagent.panel_app.api_tokens import ApiTokens
            from dsagent.panel_app.sessions import LoginSessions

            credentials.tokens = ApiTokens(store.workspace.home)

            credentials.sessions = LoginSessions(store.workspace.home / "dashboard-sessions.json",
                                                 lifetime_s=settings.dashboard_session_days * 86400,
                                                 idle_s=settings.dashboard_session_idle_hours * 3600)
        return cls(store, settings, credentials)

    @property
    def home(self) -> Path:
        return self.store.workspace.home

    @property
    def thumbnails_dir(self) -> Path:
        return self.home / "thumbnails"

    @property
    def poll_ms(self) -> int:
        return max(100, int(self.settings.dashboard_poll_interval * 1000))

    async def read(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a blocking store call in a worker thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, lambda: fn(*args, **kwargs))

    def service(self, name: str, factory: Callable[[], T]) -> T:
        """The server's one ``name`` object, made by ``factory`` the first time (event loop thread only)."""
        if name not in self.services:
            self.services[name] = factory()
        return self.services[name]

    def close(self) -> None:
        for service in list(self.services.values()):
            shutdown = getattr(service, "shutdown", None)
            if shutdown is not None:
                shutdown()  # e.g. the chats' kernels: none may outlive the server
        self.services.clear()
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.store.close()
