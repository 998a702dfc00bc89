"""The loopback E2B server for the e2b tests: one per test run (its ports are fixed by the SDK's debug mode)."""

from __future__ import annotations

import pytest

from dsagent.settings import Settings
from dsagent.testing.e2b_server import E2BLoopbackServer


@pytest.fixture(scope="session")
def e2b_server(tmp_path_factory):
    """E2B's code interpreter and envd on 127.0.0.1:49999/49983, with real ipykernels behind them."""
    root = tmp_path_factory.mktemp("e2b-sandbox")
    settings = Settings(kernel_pool_size=0, home=str(tmp_path_factory.mktemp("e2b-server-home")))
    with E2BLoopbackServer(root, settings=settings) as server:  # fails clearly if the ports are taken
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


__all__ = ["e2b_debug", "e2b_server"]
