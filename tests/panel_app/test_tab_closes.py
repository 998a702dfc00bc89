"""A browser tab that closes while the server still handles one of its messages: the dashboard's real server in this
process (so the test can hold a page's document lock, as a long poll does, and run Bokeh's keep-alive job when it
wants instead of every 37 s) and a real Chromium.

What went wrong before (three `make test` logs): a closed tab's last message waited for its page's document lock; the
keep-alive job found the tab's socket closed and detached the connection from its session; the message, then the
websocket handler's own close, met a connection without a session and Bokeh logged ``AssertionError`` tracebacks.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import pytest

from dsagent.settings import Settings

from .conftest import free_port

pytestmark = pytest.mark.xdist_group("panel-tab-closes")


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture
def server_in_process(tmp_path):
    """``build_server`` on a fresh workspace, run on its own thread's loop; (server, url)."""
    from dsagent.panel_app.app import build_server, origins_for
    from dsagent.panel_app.context import AppContext

    ctx = AppContext.create(Settings(home=str(tmp_path / "ws"), dashboard_poll_interval=0.25))
    port = free_port()
    started: dict = {}
    ready = threading.Event()

    def serve() -> None:
        asyncio.set_event_loop(asyncio.new_event_loop())
        server = build_server(ctx, port=port, address="127.0.0.1", cookie_secret="t" * 32,
                              websocket_origins=origins_for("127.0.0.1", port))
        started["server"] = server
        server.start()
        ready.set()
        server.io_loop.start()

    thread = threading.Thread(target=serve, name="dashboard-under-test", daemon=True)
    thread.start()
    assert ready.wait(60), "the dashboard did not start"
    server = started["server"]
    try:
        yield server, f"http://127.0.0.1:{port}/"
    finally:
        def stop() -> None:
            server.stop()
            server.io_loop.stop()
        server.io_loop.add_callback(stop)
        thread.join(15)
        ctx.close()


def _on_loop(server, coroutine, timeout: float = 30):
    return asyncio.run_coroutine_threadsafe(coroutine, server.io_loop.asyncio_loop).result(timeout)


def test_a_tab_closed_while_its_message_waits_for_the_page_leaves_no_traceback(server_in_process, browser):
    server, url = server_in_process
    records = _Records()
    records.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(records)
    try:
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        page = context.new_page()
        page.goto(url + "runs")
        page.get_by_text("No runs yet").first.wait_for(timeout=45_000)
        bokeh_app = server._tornado
        [session] = bokeh_app._applications["/runs"].sessions
        lock = session._lock

        async def hold() -> None:
            await lock.acquire()  # as a poll reading the store holds it
        _on_loop(server, hold())
        page.evaluate("Bokeh.documents[0].set_title('the tab goes')")  # a message of the tab's, for the page: it waits
        deadline = time.monotonic() + 30
        while not lock._block._waiters and time.monotonic() < deadline:
            time.sleep(0.02)
        assert lock._block._waiters, "the tab's message did not reach the server"
        context.close()  # the tab goes while its message waits

        async def keep_alive() -> None:
            for _ in range(20):  # Bokeh's job as it runs every 37 s; it notices the socket is gone within a few pings
                bokeh_app._ping_job.callback()
                await asyncio.sleep(0.05)
            lock.release()  # the poll ends: the waiting message is handled, then the handler closes
            await asyncio.sleep(1)
        _on_loop(server, keep_alive())
        assert not bokeh_app._clients  # the handler let go of its connection when it closed
    finally:
        logging.getLogger().removeHandler(records)
    assert not [line for line in records.lines if "Traceback" in line or "AssertionError" in line or "exception" in line.lower()], records.lines
