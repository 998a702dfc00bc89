"""Shared fixtures: every test gets its own workspace in a temp dir."""

from __future__ import annotations

import os

import pytest

# kernel fork templates outlive the processes that start them (the next CLI call finds
# them); the ones tests start need not wait the default 10 idle minutes after the suite
os.environ.setdefault("DSAGENT_KERNEL_FORK_IDLE", "60")

# the conformance kit lives in the package, not in tests/: show values in its failed asserts too
pytest.register_assert_rewrite("dsagent.testing.conformance", "dsagent.testing.notebook_parity")


@pytest.fixture(autouse=True)
def workspace_home(tmp_path, monkeypatch):
    """DSAGENT_HOME points at a fresh folder, so no test touches ./.dsagent."""
    home = tmp_path / "dsagent-home"
    monkeypatch.setenv("DSAGENT_HOME", str(home))
    return home
