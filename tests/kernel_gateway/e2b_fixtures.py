"""The loopback E2B server for the e2b tests: one per test run (its ports are fixed by the SDK's debug mode).

Every test that uses it runs in the xdist group ``e2b`` (tests/conftest.py adds the
mark), so one worker serves them all; a second test run on the same machine waits
for the ports at start (the lock in ``tests/conftest.py``).
"""

from __future__ import annotations

import time

import pytest

from dsagent.settings import Settings
from dsagent.testing.e2b_server import E2BLoopbackServer


@pytest.fixture(scope="session")
def e2b_server(tmp_path_factory):
    """E2B's code interpreter and envd on 127.0.0.1:49999/49983, with real ipykernels and commands behind them."""
    root = tmp_path_factory.mktemp("e2b-sandbox")
    settings = Settings(kernel_pool_size=0, home=str(tmp_path_factory.mktemp("e2b-server-home")))
    # Jupyter's restarter looks for a dead kernel every 3 s; every 1 s here only makes the death tests quicker
    with E2BLoopbackServer(root, settings=settings, restarter_seconds=1.0) as server:  # fails clearly if the ports are taken
        yield server


@pytest.fixture
def e2b_debug(e2b_server, monkeypatch):
    """The SDK in debug mode, talking to the loopback server; no API key in the environment."""
    monkeypatch.setenv("E2B_DEBUG", "true")
    monkeypatch.delenv("E2B_API_KEY", raising=False)
    if e2b_server.expired:
        e2b_server.revive()
    yield e2b_server
    e2b_server.revive()
    leaked = _leaked_contexts(e2b_server)
    if leaked:
        pytest.fail(
            f"the test left {len(leaked)} kernel(s) (code contexts) on the loopback E2B server ({', '.join(leaked)}): "
            "shut sessions down (`async with`, shutdown()); detach() only for a session a later step reconnects to",
            pytrace=False,
        )


def _leaked_contexts(server: E2BLoopbackServer, wait: float = 5.0) -> list[str]:
    """Contexts still open after a test (waiting for removals in flight); they are dropped, so the next test starts clean."""
    end = time.monotonic() + wait
    while server.created_contexts() and time.monotonic() < end:
        time.sleep(0.05)
    leaked = server.created_contexts()
    if leaked:
        server.expire()  # drops every context
        server.revive()
    return leaked


__all__ = ["e2b_debug", "e2b_server"]
