"""The conformance kit: one pytest suite every kernel backend must pass.

Use it by subclassing in a test module and providing a ``backend`` fixture::

    class TestLocalConformance(BackendConformance):
        @pytest.fixture
        async def backend(self):
            async with LocalBackend(pool_size=1) as backend:
                yield backend

What a backend cannot support is declared in ``KernelBackend.unsupported``
(capability -> reason); the kit then skips that check *with the reason*, so a
gap is always visible in the test report, never silent. Capabilities:
``external_kill`` (the test can kill -9 the kernel process from outside).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest

from dsagent.kernel_gateway.base import KernelBackend, KernelSession

__all__ = ["BackendConformance"]


def requires(backend: KernelBackend, capability: str) -> None:
    """Skip, naming the backend's reason, if it declares ``capability`` unsupported."""
    reason = backend.unsupported.get(capability)
    if reason:
        pytest.skip(f"{backend.name} does not support {capability}: {reason}")


class BackendConformance:
    """Subclass and provide the async ``backend`` fixture."""

    @pytest.fixture
    async def backend(self) -> KernelBackend:  # pragma: no cover - subclasses provide it
        raise NotImplementedError("provide a `backend` fixture in the subclass")

    @pytest.fixture
    async def session(self, backend: KernelBackend):
        session = await backend.start_session()
        try:
            yield session
        finally:
            await session.shutdown()

    async def test_expression_result_and_count(self, session: KernelSession):
        result = await session.execute("40 + 2")
        assert result.status == "ok", result.error
        assert result.result == "42"
        assert result.execution_count == 1
        assert result.outputs == [
            {"output_type": "execute_result", "data": {"text/plain": "42"}, "metadata": {}, "execution_count": 1}
        ]

    async def test_error_is_data(self, session: KernelSession):
        result = await session.execute("print('before')\n1/0")
        assert result.status == "error"
        assert result.error is not None and result.error.ename == "ZeroDivisionError"
        assert result.stream_text() == "before\n"
        assert result.outputs[-1]["output_type"] == "error"
        assert (await session.execute("'still usable'")).result == "'still usable'"

    async def test_kill_from_inside_is_died_fast_with_partial_output(self, session: KernelSession):
        start = time.monotonic()
        code = "print('partial', flush=True)\nimport os, time\ntime.sleep(0.3)\nos.kill(os.getpid(), 9)"
        result = await session.execute(code, timeout=60)
        assert result.status == "died", result
        assert time.monotonic() - start < 5
        assert "partial" in result.stream_text()
        await session.restart()
        assert (await session.execute("1 + 1")).result == "2"

    async def test_kill_from_outside(self, backend: KernelBackend, session: KernelSession):
        requires(backend, "external_kill")
        pid = session.kernel_pid
        assert pid, "a backend that supports external_kill must expose kernel_pid"
        task = asyncio.ensure_future(session.execute("import time\nprint('started', flush=True)\ntime.sleep(30)", timeout=60))
        await asyncio.sleep(1.0)
        start = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        result = await task
        assert result.status == "died"
        assert time.monotonic() - start < 5
        assert "started" in result.stream_text()
