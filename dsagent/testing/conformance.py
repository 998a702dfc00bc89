"""The conformance kit: one pytest suite every kernel backend must pass.

Use it by subclassing in a test module and providing a ``backend`` fixture::

    class TestLocalConformance(BackendConformance):
        @pytest.fixture
        async def backend(self):
            async with LocalBackend(pool_size=1) as backend:
                yield backend

The kit uses only the public ``KernelBackend`` / ``KernelSession`` API, so the
same checks run on every backend: outputs of known cells (a PNG plot, rich
display data, errors, syntax errors), the order of streamed outputs and of
``on_output`` calls (sync and async hooks), timeout + interrupt, interrupt
from another task, death detection, restart, files, unicode, non-UTF-8 bytes,
output floods, ``sys.exit()``, ``input()``, ``clear_output`` and display
updates, shutdown (also when the caller is cancelled), explicit work dirs and
``env``.

Contract details a backend must meet for the kit to work:

- ``backend.settings`` is a ``Settings`` that sessions read when they use a
  setting. A few checks swap in a copy with a small ``max_output_bytes`` or
  ``interrupt_grace`` for their duration (and restore it after).
- ``start_session(work_dir=...)`` takes the path from the ``new_work_dir``
  fixture: by default an absolute path under pytest's ``tmp_path`` that does
  not exist yet. A backend whose kernels see another file system overrides
  that fixture with a path that is valid there.
- When ``session.kernel_pid`` is not None, it is a pid on this machine, and
  the kit checks with psutil that the process is gone after shutdown.

What a backend cannot support is declared in ``KernelBackend.unsupported``
(capability -> reason); the kit then skips that check *with the reason*, so a
gap is always visible in the test report, never silent. Capabilities:

- ``external_kill``: the test can kill -9 the kernel process from outside
  (needs ``kernel_pid``).
- ``clear_output`` / ``display_update``: ``IPython.display.clear_output()``
  and ``display(..., display_id=True).update()`` change the kept outputs,
  and an update in a later cell is reported in ``Execution.displays``.
- ``ipython_history``: the kernel keeps IPython history in memory as
  nbclient's kernels do (checked by the engine-parity tests, not this kit).
- ``surrogate_text``: text with lone surrogates (``bytes.decode(...,
  'surrogateescape')`` printed) reaches the caller as valid text.
- ``death_recovery``: what a cell printed just before its kernel died, and
  which never left the kernel over IOPub, is recovered into the cell's
  outputs (marked ``{"dsagent": {"recovered": true}}``).
- ``death_reason``: a died cell's error names how the kernel ended (the
  signal by name, e.g. SIGSEGV for a segfault) and quotes its last lines.
"""

from __future__ import annotations

import asyncio
import base64
import io
import os
import signal
import time
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Callable

import pytest

from dsagent.errors import FileAccessError, SessionClosed
from dsagent.kernel_gateway.base import KernelBackend, KernelSession
from dsagent.kernel_gateway.models import Execution, Output

__all__ = ["BackendConformance", "requires", "process_gone"]

#: how long the kit allows between a kernel's death and ``execute`` reporting it
DEATH_DETECTION_SECONDS = 5.0
#: slack on top of timeouts, for a loaded 2-core machine
MARGIN_SECONDS = 3.0
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

PLOT_CELL = """\
import matplotlib
matplotlib.use("module://matplotlib_inline.backend_inline")
import matplotlib.pyplot as plt
fig, ax = plt.subplots(figsize=(3, 2))
ax.plot([1, 3, 2])
plt.show()
"""

#: prints, then sleeps until interrupted; the first output tells the test the cell is running
LONG_CELL = "import time\nprint('started', flush=True)\ntime.sleep(60)\nprint('never')"


def requires(backend: KernelBackend, capability: str) -> None:
    """Skip, naming the backend's reason, if it declares ``capability`` unsupported."""
    reason = backend.unsupported.get(capability)
    if reason:
        pytest.skip(f"{backend.name} does not support {capability}: {reason}")


async def process_gone(pid: int, within: float = DEATH_DETECTION_SECONDS) -> bool:
    """True once no live (non-zombie) process has ``pid``, waiting up to ``within`` seconds."""
    import psutil

    end = time.monotonic() + within
    while True:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        if time.monotonic() >= end:
            return False
        await asyncio.sleep(0.05)


@asynccontextmanager
async def overridden_settings(backend: KernelBackend, **values: Any) -> AsyncIterator[None]:
    """Give ``backend`` a copy of its settings with ``values`` changed, for the block only."""
    original = backend.settings
    backend.settings = original.replace(**values)
    try:
        yield
    finally:
        backend.settings = original


def text_of(output: Output) -> str:
    text = output.get("text", "")
    return "".join(text) if isinstance(text, list) else text


def streams(result: Execution) -> list[tuple[str, str]]:
    """(name, text) of each stream output, in order."""
    return [(o["name"], text_of(o)) for o in result.outputs if o["output_type"] == "stream"]


def until_output(marker: str) -> tuple[asyncio.Event, Callable[[Output], None]]:
    """An event set when an output containing ``marker`` arrives, and the hook that sets it."""
    seen = asyncio.Event()

    def hook(output: Output) -> None:
        if marker in text_of(output):
            seen.set()

    return seen, hook


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

    @pytest.fixture
    def new_work_dir(self, tmp_path) -> str:
        """A work dir that does not exist yet (override for backends on another file system)."""
        return str(tmp_path / "explicit" / "work-dir")

    # -- outputs of known cells ---------------------------------------------

    async def test_expression_result_and_count(self, session: KernelSession):
        result = await session.execute("40 + 2")
        assert result.status == "ok", result.error
        assert result.result == "42"
        assert result.execution_count == 1
        assert result.outputs == [
            {"output_type": "execute_result", "data": {"text/plain": "42"}, "metadata": {}, "execution_count": 1}
        ]
        assert result.error is None and not result.truncated
        assert result.started is not None and result.finished is not None and result.duration >= 0
        second = await session.execute("print('two')")
        assert second.execution_count == 2
        assert second.outputs == [{"output_type": "stream", "name": "stdout", "text": "two\n"}]

    async def test_rich_display_data(self, session: KernelSession):
        code = "from IPython.display import HTML, display\ndisplay(HTML('<b>bold</b>'))\nHTML('<i>it</i>')"
        result = await session.execute(code)
        assert result.status == "ok", result.error
        display, last = result.outputs
        assert display["output_type"] == "display_data" and display["data"]["text/html"] == "<b>bold</b>"
        assert "text/plain" in display["data"] and display["metadata"] == {}
        assert last["output_type"] == "execute_result" and last["data"]["text/html"] == "<i>it</i>"
        assert last["execution_count"] == result.execution_count

    async def test_png_plot_is_display_data(self, session: KernelSession):
        from PIL import Image

        result = await session.execute(PLOT_CELL, timeout=120)
        assert result.status == "ok", result.error
        images = [o for o in result.outputs if o["output_type"] == "display_data" and "image/png" in o["data"]]
        assert len(images) == 1, result.outputs
        png = base64.b64decode(images[0]["data"]["image/png"])
        assert png.startswith(PNG_SIGNATURE)
        with Image.open(io.BytesIO(png)) as image:
            image.verify()  # the whole file decodes, not just its header
            assert image.format == "PNG" and image.size[0] > 100 and image.size[1] > 50
        assert "Figure" in images[0]["data"]["text/plain"]

    async def test_error_is_data(self, session: KernelSession):
        result = await session.execute("print('before')\n1/0\nprint('after')")
        assert result.status == "error"
        assert result.error is not None and result.error.ename == "ZeroDivisionError"
        assert result.error.evalue == "division by zero"
        assert any("ZeroDivisionError" in line for line in result.error.traceback)
        assert result.stream_text() == "before\n"
        last = result.outputs[-1]
        assert last["output_type"] == "error"
        assert (last["ename"], last["evalue"], last["traceback"]) == ("ZeroDivisionError", "division by zero", result.error.traceback)
        assert (await session.execute("'still usable'")).result == "'still usable'"

    async def test_syntax_error_runs_nothing(self, session: KernelSession):
        result = await session.execute("print('not run')\ndef broken(:\n    pass")
        assert result.status == "error"
        assert result.error is not None and result.error.ename == "SyntaxError"
        assert result.stream_text() == ""
        assert [o["output_type"] for o in result.outputs] == ["error"]

    async def test_sys_exit_is_data_not_a_crash(self, session: KernelSession):
        await session.execute("kept = 'yes'")
        result = await session.execute("import sys\nsys.exit(3)", timeout=30)
        assert result.status == "error", result
        assert result.error is not None and result.error.ename == "SystemExit" and result.error.evalue == "3"
        assert await session.is_alive()
        assert (await session.execute("kept")).result == "'yes'"

    async def test_input_is_a_clear_error_not_a_hang(self, session: KernelSession):
        start = time.monotonic()
        result = await session.execute("name = input('name? ')", timeout=30)
        assert time.monotonic() - start < 10
        assert result.status == "error", result
        assert result.error is not None and "input" in f"{result.error.ename} {result.error.evalue}".lower()
        assert (await session.execute("1 + 1")).result == "2"

    async def test_clear_output(self, backend: KernelBackend, session: KernelSession):
        requires(backend, "clear_output")
        clear = "from IPython.display import clear_output, display\nprint('gone')\nclear_output()\nprint('kept')"
        assert (await session.execute(clear)).outputs == [{"output_type": "stream", "name": "stdout", "text": "kept\n"}]
        wait = "print('gone')\nclear_output(wait=True)\nprint('kept')"
        assert (await session.execute(wait)).outputs == [{"output_type": "stream", "name": "stdout", "text": "kept\n"}]

    async def test_display_updates(self, backend: KernelBackend, session: KernelSession):
        requires(backend, "display_update")
        update = "h = display('first', display_id=True)\nprint('between')\nh.update('second')"
        result = await session.execute(update)
        assert result.status == "ok", result.error
        assert [o["output_type"] for o in result.outputs] == ["display_data", "stream"]
        assert result.outputs[0]["data"]["text/plain"] == "'second'"
        # an update of an earlier cell's display is reported for the notebook to apply (Execution.displays)
        [(display_id, shown)] = result.displays.owners.items()
        assert shown == [0]
        later = await session.execute("h.update('third')")
        assert later.outputs == [] and later.displays.owners == {}
        assert [(u.display_id, u.data["text/plain"]) for u in later.displays.updates] == [(display_id, "'third'")]

    # -- streaming ----------------------------------------------------------

    async def test_stdout_and_stderr_keep_their_order(self, session: KernelSession):
        seen: list[tuple[str, str]] = []
        code = "import sys\nprint('a', flush=True)\nprint('b', file=sys.stderr, flush=True)\nprint('c', flush=True)"
        result = await session.execute(code, on_output=lambda out: seen.append((out["name"], text_of(out))))
        expected = [("stdout", "a\n"), ("stderr", "b\n"), ("stdout", "c\n")]
        assert streams(result) == expected
        assert seen == expected

    @pytest.mark.parametrize("hook_kind", ["sync", "async"])
    async def test_on_output_is_called_as_outputs_arrive(self, session: KernelSession, hook_kind: str):
        loop = asyncio.get_running_loop()
        seen: list[tuple[float, str]] = []

        def sync_hook(output: Output) -> None:
            seen.append((loop.time(), text_of(output) or output["output_type"]))

        async def async_hook(output: Output) -> None:
            await asyncio.sleep(0)
            sync_hook(output)

        code = "import time\nfor i in range(3):\n    print(i, flush=True)\n    time.sleep(0.4)\ni"
        result = await session.execute(code, on_output=sync_hook if hook_kind == "sync" else async_hook)
        done = loop.time()
        assert [text for _, text in seen] == ["0\n", "1\n", "2\n", "execute_result"]
        assert result.stream_text() == "0\n1\n2\n"  # merged in the result, one call per chunk in the hook
        assert done - seen[0][0] > 0.6, "the first output reached the hook only at the end of the cell"
        assert seen[1][0] - seen[0][0] > 0.2

    async def test_failing_hook_loses_no_output(self, session: KernelSession):
        def hook(output: Output) -> None:
            raise RuntimeError("a broken hook")

        result = await session.execute("print('kept')\n'value'", on_output=hook)
        assert result.status == "ok" and result.stream_text() == "kept\n" and result.result == "'value'"

    # -- timeouts, interrupts, death ---------------------------------------

    async def test_timeout_interrupts_and_keeps_state(self, backend: KernelBackend, session: KernelSession):
        await session.execute("kept = 7")
        start = time.monotonic()
        result = await session.execute(LONG_CELL, timeout=1)
        elapsed = time.monotonic() - start
        assert result.status == "timeout" and result.error is not None
        assert elapsed < 1 + backend.settings.interrupt_grace + MARGIN_SECONDS, elapsed
        assert result.stream_text() == "started\n"  # partial output kept
        after = await session.execute("kept")
        assert after.status == "ok" and after.result == "7"

    async def test_timeout_of_a_cell_that_ignores_interrupts_never_hangs(self, backend: KernelBackend, session: KernelSession):
        stubborn = (
            "import time\nprint('started', flush=True)\nwhile True:\n"
            "    try:\n        time.sleep(60)\n    except KeyboardInterrupt:\n        pass"
        )
        async with overridden_settings(backend, interrupt_grace=1.0):
            start = time.monotonic()
            result = await session.execute(stubborn, timeout=1)
            elapsed = time.monotonic() - start
        assert result.status == "timeout" and result.error is not None
        assert elapsed < 1 + 1 + 15, elapsed  # timeout + grace + a kernel restart on a busy machine
        assert "started" in result.stream_text()
        assert (await session.execute("'usable'")).result == "'usable'"

    async def test_interrupt_from_another_task(self, session: KernelSession):
        await session.execute("kept = 'state'")
        started, hook = until_output("started")
        task = asyncio.ensure_future(session.execute(LONG_CELL, timeout=60, on_output=hook))
        await asyncio.wait_for(started.wait(), 30)
        start = time.monotonic()
        await session.interrupt()
        result = await asyncio.wait_for(task, 30)
        assert time.monotonic() - start < DEATH_DETECTION_SECONDS
        assert result.status == "error", result
        assert result.error is not None and result.error.ename == "KeyboardInterrupt"
        assert result.stream_text() == "started\n"
        assert (await session.execute("kept")).result == "'state'"

    @pytest.mark.parametrize("how", ["os.kill(os.getpid(), 9)", "os._exit(1)"])
    async def test_death_from_inside_is_reported_fast_with_partial_output(self, session: KernelSession, how: str):
        await session.execute("lost = 1")
        code = f"import os, time\nprint('partial', flush=True)\ntime.sleep(0.3)\n{how}"
        start = time.monotonic()
        result = await session.execute(code, timeout=60)
        assert result.status == "died", result
        assert time.monotonic() - start < DEATH_DETECTION_SECONDS + 0.3
        assert result.error is not None and result.error.evalue
        assert "partial" in result.stream_text()
        await session.restart()
        after = await session.execute("1 + 1")
        assert after.status == "ok" and after.result == "2"
        assert (await session.execute("lost")).error.ename == "NameError"

    async def test_output_printed_just_before_death_is_recovered(self, backend: KernelBackend, session: KernelSession):
        requires(backend, "death_recovery")
        # not flushed: ipykernel sends it 0.2 s later, so over IOPub it is always lost
        result = await session.execute("import os\nprint('said before dying')\nos.kill(os.getpid(), 9)", timeout=60)
        assert result.status == "died", result
        assert "said before dying" in result.stream_text()
        recovered = [o for o in result.outputs if o.get("metadata", {}).get("dsagent", {}).get("recovered")]
        assert recovered and "said before dying" in text_of(recovered[0])
        assert "SIGKILL" in result.error.evalue and "| said before dying" in result.error.evalue
        await session.restart()
        again = await session.execute("print('after', flush=True)")
        assert again.outputs == [{"output_type": "stream", "name": "stdout", "text": "after\n"}]

    async def test_segfault_is_named(self, backend: KernelBackend, session: KernelSession):
        requires(backend, "death_reason")
        result = await session.execute("import ctypes\nprint('about to crash', flush=True)\nctypes.string_at(0)", timeout=60)
        assert result.status == "died", result
        assert "SIGSEGV" in result.error.evalue and "segmentation fault" in result.error.evalue
        assert result.stream_text().count("about to crash") == 1  # arrived or recovered, never both

    async def test_kill_from_outside(self, backend: KernelBackend, session: KernelSession):
        requires(backend, "external_kill")
        pid = session.kernel_pid
        assert pid, "a backend that supports external_kill must expose kernel_pid"
        started, hook = until_output("started")
        task = asyncio.ensure_future(session.execute(LONG_CELL, timeout=60, on_output=hook))
        await asyncio.wait_for(started.wait(), 30)
        start = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        result = await asyncio.wait_for(task, 30)
        assert result.status == "died"
        assert time.monotonic() - start < DEATH_DETECTION_SECONDS
        assert result.stream_text() == "started\n"
        assert not await session.is_alive()
        await session.restart()
        assert session.kernel_pid != pid
        assert (await session.execute("1 + 1")).result == "2"

    async def test_restart_loses_state_and_stays_usable(self, session: KernelSession):
        await session.execute("gone = 1")
        await session.restart()
        result = await session.execute("gone")
        assert result.status == "error" and result.error.ename == "NameError"
        assert result.execution_count == 1
        assert (await session.execute("2 * 21")).result == "42"

    # -- files ---------------------------------------------------------------

    async def test_files_round_trip(self, session: KernelSession):
        payload = bytes(range(256)) * 4 + b"\x00\xff\r\n"
        await session.upload("sub/deeper/data.bin", payload)
        assert await session.download("sub/deeper/data.bin") == payload
        result = await session.execute("print(open('sub/deeper/data.bin', 'rb').read() == bytes(range(256)) * 4 + b'\\x00\\xff\\r\\n')")
        assert result.stream_text() == "True\n"
        await session.execute("open('made.txt', 'w', encoding='utf-8').write('héllo')")
        assert await session.download("made.txt") == "héllo".encode()
        top = {f.path: f for f in await session.list_files(".")}
        assert {"sub", "made.txt"} <= set(top) and "sub/deeper" not in top
        assert top["sub"].is_dir and not top["made.txt"].is_dir and top["made.txt"].size == len("héllo".encode())
        everything = {f.path: f for f in await session.list_files(".", recursive=True)}
        assert {"sub", "sub/deeper", "sub/deeper/data.bin", "made.txt"} <= set(everything)
        assert everything["sub/deeper/data.bin"].size == len(payload)
        assert [f.path for f in await session.list_files("sub/deeper")] == ["sub/deeper/data.bin"]
        await session.upload("made.txt", b"replaced")
        assert await session.download("made.txt") == b"replaced"

    async def test_paths_outside_the_work_dir_are_refused(self, session: KernelSession):
        for path in ("../escape.txt", "sub/../../escape.txt"):
            with pytest.raises(FileAccessError):
                await session.upload(path, b"x")
            with pytest.raises(FileAccessError):
                await session.download(path)
        with pytest.raises(FileAccessError):
            await session.list_files("..")
        with pytest.raises(FileAccessError):
            await session.download("no-such-file.txt")

    # -- text and bytes ------------------------------------------------------

    async def test_unicode_in_code_and_output(self, session: KernelSession):
        result = await session.execute("s = '数据 ✓ 🚀 Ωμέγα'\nprint(s)\ns")
        assert result.stream_text() == "数据 ✓ 🚀 Ωμέγα\n"
        assert result.result == "'数据 ✓ 🚀 Ωμέγα'"
        error = await session.execute("raise ValueError('ошибка 错误 💥')")
        assert error.error is not None and error.error.evalue == "ошибка 错误 💥"
        await session.upload("données/数据.txt", "🚀".encode())
        assert (await session.execute("print(open('données/数据.txt', encoding='utf-8').read())")).stream_text() == "🚀\n"

    async def test_non_utf8_bytes_written_to_the_fd(self, session: KernelSession):
        code = (
            "import os, time\n"
            "os.write(1, b'\\xff\\xfe raw bytes\\n')\n"  # straight to the process's stdout
            "time.sleep(0.3)"  # fd-level output is forwarded by a thread: give it time
        )
        result = await session.execute(code, timeout=30)
        assert result.status == "ok", result.error
        text = result.stream_text()
        assert "raw bytes" in text and "\ufffd" in text
        text.encode("utf-8")  # what reached us is valid text
        assert (await session.execute("'after'")).result == "'after'"

    async def test_lone_surrogates_in_printed_text(self, backend: KernelBackend, session: KernelSession):
        requires(backend, "surrogate_text")
        code = "print(b'\\xc3\\x28 decoded'.decode('utf-8', 'surrogateescape'), flush=True)"
        result = await session.execute(code, timeout=30)
        assert result.status == "ok", result.error
        text = result.stream_text()
        assert "decoded" in text
        text.encode("utf-8")
        assert (await session.execute("'after'")).result == "'after'"

    async def test_output_flood_is_capped_and_marked(self, backend: KernelBackend, session: KernelSession):
        limit = 64 * 1024
        async with overridden_settings(backend, max_output_bytes=limit):
            flood = await session.execute("for i in range(20000):\n    print(i, 'x' * 100)", timeout=120)
            one_big = await session.execute("print('y' * 2_000_000)", timeout=120)
            after = await session.execute("print('small')")
        for result in (flood, one_big):
            assert result.status == "ok", result.error
            assert result.truncated
            kept = sum(len(text_of(o)) for o in result.outputs if o["output_type"] == "stream")
            assert kept <= limit + 1024, kept  # the cap, plus a note saying what was dropped
        assert flood.stream_text().startswith("0 xxx")
        assert not after.truncated and after.stream_text() == "small\n"

    # -- shutdown -------------------------------------------------------------

    async def test_shutdown_is_idempotent_and_final(self, backend: KernelBackend):
        session = await backend.start_session()
        assert (await session.execute("1")).ok
        pid = session.kernel_pid
        await session.shutdown()
        await session.shutdown()
        assert not await session.is_alive()
        if pid is not None:
            assert await process_gone(pid), f"kernel process {pid} still runs after shutdown"
        with pytest.raises(SessionClosed):
            await session.execute("1")
        with pytest.raises(SessionClosed):
            await session.restart()

    async def test_cancelled_execute_then_shutdown(self, session: KernelSession):
        started, hook = until_output("started")
        task = asyncio.ensure_future(session.execute(LONG_CELL, timeout=60, on_output=hook))
        await asyncio.wait_for(started.wait(), 30)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # the cancelled cell does not keep the kernel busy
        after = await asyncio.wait_for(session.execute("'free'", timeout=30), 30)
        assert after.result == "'free'"
        pid = session.kernel_pid
        await session.shutdown()
        if pid is not None:
            assert await process_gone(pid)

    async def test_cancelled_inside_async_with_leaves_no_kernel(self, backend: KernelBackend):
        sessions: list[KernelSession] = []
        started, hook = until_output("started")

        async def work() -> None:
            async with await backend.start_session() as session:
                sessions.append(session)
                await session.execute(LONG_CELL, timeout=60, on_output=hook)

        task = asyncio.ensure_future(work())
        await asyncio.wait_for(started.wait(), 60)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        (session,) = sessions
        assert not await session.is_alive()
        if session.kernel_pid is not None:
            assert await process_gone(session.kernel_pid)
        with pytest.raises(SessionClosed):
            await session.execute("1")

    async def test_shutdown_cancelled_midway_still_stops_the_kernel(self, backend: KernelBackend):
        session = await backend.start_session()
        pid = session.kernel_pid
        task = asyncio.ensure_future(session.shutdown())
        await asyncio.sleep(0.05)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        if pid is not None:
            assert await process_gone(pid), f"kernel process {pid} survived a cancelled shutdown"
        await session.shutdown()  # completes what the cancelled call left, or is a no-op
        assert not await session.is_alive()

    # -- session set-up -------------------------------------------------------

    async def test_explicit_work_dir_and_env(self, backend: KernelBackend, new_work_dir: str):
        env = {"DSAGENT_CONFORMANCE": "värde ✓", "DSAGENT_OTHER": "2"}
        async with await backend.start_session(work_dir=new_work_dir, env=env) as session:
            tail = new_work_dir.replace(os.sep, "/").rstrip("/").rsplit("/", 2)[-2:]
            assert session.work_dir.replace(os.sep, "/").endswith("/".join(tail)), session.work_dir
            cwd = await session.execute("import os\nprint(os.getcwd())")
            assert cwd.stream_text() == session.work_dir + "\n"
            seen = await session.execute("print(os.environ['DSAGENT_CONFORMANCE'], os.environ['DSAGENT_OTHER'])")
            assert seen.stream_text() == "värde ✓ 2\n"
            await session.execute("open('written-by-code.txt', 'w').write('x')")
            assert "written-by-code.txt" in {f.path for f in await session.list_files()}
            assert await session.download("written-by-code.txt") == b"x"
            await session.restart()  # the work dir and env survive a restart
            again = await session.execute("import os\nprint(os.getcwd())\nprint(os.environ.get('DSAGENT_CONFORMANCE'))")
            assert again.stream_text() == f"{session.work_dir}\nvärde ✓\n"

    async def test_sessions_do_not_share_state(self, backend: KernelBackend):
        async with await backend.start_session() as first, await backend.start_session() as second:
            await first.execute("secret = 1")
            result = await second.execute("secret")
            assert result.status == "error" and result.error.ename == "NameError"
            assert first.work_dir != second.work_dir
            await first.upload("only-in-first.txt", b"1")
            assert "only-in-first.txt" not in {f.path for f in await second.list_files()}
