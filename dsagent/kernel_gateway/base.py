"""The two lifecycles every kernel backend implements: a backend makes sessions.

A ``KernelBackend`` is long-lived (it may keep a warm pool); a ``KernelSession``
is one stateful kernel plus its work dir. Both are async context managers.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Awaitable, Callable, ClassVar, Mapping, Union

from dsagent.kernel_gateway.models import Execution, FileInfo, Output
from dsagent.settings import Settings

__all__ = ["KernelBackend", "KernelSession", "OutputHook", "run_hook"]

log = logging.getLogger(__name__)

OutputHook = Callable[[Output], Union[None, Awaitable[None]]]


async def run_hook(hook: Callable[..., Any] | None, *args: Any) -> None:
    """Call a sync or async hook; a failing hook is logged, never loses kernel output."""
    if hook is None:
        return
    try:
        result = hook(*args)
        if inspect.isawaitable(result):
            await result
    except asyncio.CancelledError:
        raise
    except Exception:
        log.warning("output hook %r failed; the output is kept", hook, exc_info=True)


class KernelSession(ABC):
    """One stateful kernel and its work dir."""

    backend_name: ClassVar[str] = ""

    @property
    @abstractmethod
    def work_dir(self) -> str:
        """The kernel's cwd, as the kernel sees it."""

    @property
    def kernel_pid(self) -> int | None:
        """Host pid of the kernel process when it runs on this machine, else None."""
        return None

    @abstractmethod
    async def execute(
        self, code: str, *, timeout: float | None = None, on_output: OutputHook | None = None
    ) -> Execution:
        """Run ``code``; errors in it are data (``Execution.status``), broken kernels are ``died``."""

    @abstractmethod
    async def interrupt(self) -> None:
        """Interrupt whatever the kernel is running."""

    @abstractmethod
    async def restart(self) -> None:
        """Start the kernel afresh in the same work dir (all state is lost)."""

    @abstractmethod
    async def is_alive(self) -> bool:
        """Whether the kernel process is running."""

    @abstractmethod
    async def upload(self, path: str, data: bytes) -> None:
        """Write ``data`` to ``path`` (relative to the work dir)."""

    @abstractmethod
    async def download(self, path: str) -> bytes:
        """Read the bytes of ``path`` (relative to the work dir)."""

    @abstractmethod
    async def list_files(self, path: str = ".", *, recursive: bool = False) -> list[FileInfo]:
        """Entries under ``path`` (relative to the work dir), sorted by path."""

    @abstractmethod
    async def shutdown(self) -> None:
        """Stop the kernel and free its resources; idempotent, safe under cancellation."""

    async def __aenter__(self) -> "KernelSession":
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.shutdown()


class KernelBackend(ABC):
    """Makes ``KernelSession``s; registered under the entry point group ``dsagent.kernel_backends``."""

    name: ClassVar[str] = ""
    #: what the conformance kit cannot check on this backend, with the reason
    unsupported: ClassVar[Mapping[str, str]] = {}

    def __init__(self, settings: Settings | None = None, **options: Any) -> None:
        self.settings = settings or Settings()
        self.options = options

    @classmethod
    def check(cls) -> str | None:
        """None if this backend can run here, else a sentence saying why not and what to do."""
        return None

    def describe(self) -> dict[str, Any]:
        """The configuration shown by ``dsagent backends``."""
        return {}

    @abstractmethod
    async def start_session(
        self, *, work_dir: str | Path | None = None, env: Mapping[str, str] | None = None
    ) -> KernelSession:
        """A new session in ``work_dir`` (created if missing; a fresh folder if None)."""

    async def aclose(self) -> None:
        """Release what the backend holds (warm kernels, connections)."""

    async def __aenter__(self) -> "KernelBackend":
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
