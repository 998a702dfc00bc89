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

    async def test_png_plot_is_display_data(self, session: KernelSession):
        import base64

        code = "import matplotlib\nmatplotlib.use('module://matplotlib_inline.backend_inline')\nimport matplotlib.pyplot as plt\nplt.plot([1, 2, 3])\nplt.show()"
        result = await session.execute(code, timeout=120)
        assert result.status == "ok", result.error
        images = [o for o in result.outputs if o["output_type"] == "display_data" and "image/png" in o.get("data", {})]
        assert images, result.outputs
        assert base64.b64decode(images[0]["data"]["image/png"])[:8] == b"\x89PNG\r\n\x1a\n"

    async def test_streaming_order_with_async_hook(self, session: KernelSession):
        seen: list[str] = []

        async def hook(output):
            seen.append(output.get("text", output["output_type"]))

        code = "import time\nfor i in range(3):\n    print(i, flush=True)\n    time.sleep(0.2)"
        result = await session.execute(code, on_output=hook)
        assert result.stream_text() == "0\n1\n2\n"
        assert "".join(seen) == "0\n1\n2\n" and len(seen) == 3

    async def test_timeout_interrupts_and_keeps_state(self, session: KernelSession):
        await session.execute("kept = 7")
        start = time.monotonic()
        result = await session.execute("import time\ntime.sleep(60)", timeout=1)
        assert result.status == "timeout" and result.error is not None
        assert time.monotonic() - start < 15
        assert (await session.execute("kept")).result == "7"

    async def test_restart_loses_state(self, session: KernelSession):
        await session.execute("gone = 1")
        await session.restart()
        result = await session.execute("gone")
        assert result.status == "error" and result.error.ename == "NameError"

    async def test_files_round_trip(self, session: KernelSession):
        payload = bytes(range(256)) * 4
        await session.upload("sub/data.bin", payload)
        assert await session.download("sub/data.bin") == payload
        result = await session.execute("print(len(open('sub/data.bin', 'rb').read()))")
        assert result.stream_text() == "1024\n"
        await session.execute("open('made.txt', 'w').write('héllo')")
        paths = {f.path for f in await session.list_files(".", recursive=True)}
        assert {"sub/data.bin", "made.txt"} <= paths

    async def test_unicode_in_code_and_output(self, session: KernelSession):
        result = await session.execute("s = '数据 ✓ 🚀'\nprint(s)\ns")
        assert result.stream_text() == "数据 ✓ 🚀\n"
        assert result.result == "'数据 ✓ 🚀'"

    async def test_shutdown_is_idempotent_and_final(self, backend: KernelBackend):
        from dsagent.errors import SessionClosed

        session = await backend.start_session()
        await session.shutdown()
        await session.shutdown()
        with pytest.raises(SessionClosed):
            await session.execute("1")
