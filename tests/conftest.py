"""Shared fixtures and the rules that let the suite run on several xdist workers (``make test``: ``-n 2 --dist loadgroup``).

- Every test gets its own workspace in a temp dir.
- A test that uses a server which must exist once per run, or is expensive to
  start, runs in that server's xdist group, so one worker starts it and runs all
  its tests: ``e2b`` (the loopback E2B server: fixed ports) and
  ``jupyter-servers`` (Kernel Gateway + Jupyter Server). Tests that ask for the
  fixture by name get the mark here; tests that reach it through
  ``request.getfixturevalue`` carry ``pytest.mark.xdist_group`` themselves.
  New module-scoped servers (Panel + Chromium, a Dask cluster): mark the module
  ``pytestmark = pytest.mark.xdist_group("<server>")`` so both workers do not
  each start one.
- The E2B loopback ports are taken for the whole run: a second run on the same
  machine waits at start for the first to finish (a file lock), and says so.
- A run in which no test passed or failed (everything skipped or deselected)
  fails with exit code 5, as an empty collection does.
"""

from __future__ import annotations

import os
import sys
import tempfile

import pytest
from filelock import FileLock, Timeout

from dsagent.cli import skip_slow_optional_imports

# as the CLI does: nbformat's jsonschema would otherwise import rfc3987_syntax, which builds a grammar
# at import (seconds of CPU in every xdist worker's collection); no schema the suite validates needs it
skip_slow_optional_imports()

# kernel fork templates outlive the processes that start them (the next CLI call finds
# them); the ones tests start need not wait the default 10 idle minutes after the suite
os.environ.setdefault("DSAGENT_KERNEL_FORK_IDLE", "60")

# the conformance kit lives in the package, not in tests/: show values in its failed asserts too
pytest.register_assert_rewrite("dsagent.testing.conformance", "dsagent.testing.notebook_parity")

#: fixture name -> the xdist group of every test that uses it
SERVER_GROUPS = {"e2b_server": "e2b", "e2b_debug": "e2b", "kernel_gateway": "jupyter-servers", "jupyter_server": "jupyter-servers"}
E2B_LOCK = os.path.join(tempfile.gettempdir(), "dsagent-e2b-loopback-ports.lock")
#: how long a second test run waits for the first to release the E2B ports
E2B_LOCK_WAIT_SECONDS = 30 * 60
_e2b_lock: FileLock | None = None


@pytest.fixture(autouse=True)
def workspace_home(tmp_path, monkeypatch):
    """DSAGENT_HOME points at a fresh folder, so no test touches ./.dsagent."""
    home = tmp_path / "dsagent-home"
    monkeypatch.setenv("DSAGENT_HOME", str(home))
    return home


# first: xdist's own hook turns xdist_group marks into node ids (``...@e2b``) and never looks again
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("xdist_group") is not None:
            continue
        group = next((SERVER_GROUPS[name] for name in getattr(item, "fixturenames", ()) if name in SERVER_GROUPS), None)
        if group is not None:
            item.add_marker(pytest.mark.xdist_group(group))


def pytest_collection_finish(session: pytest.Session) -> None:
    # after -m/-k deselection (a `pytest -m real_model` run selects no e2b test and must not wait for the ports);
    # an xdist controller collects nothing itself: its hook below sees the workers' selected tests
    if not hasattr(session.config, "workerinput"):  # not an xdist worker: this process runs the tests itself
        _lock_e2b_ports_if_needed(item.nodeid for item in session.items)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_node_collection_finished(node, ids: list[str]) -> None:
    """The xdist controller takes the E2B port lock for its workers, before any test is handed out."""
    _lock_e2b_ports_if_needed(ids)


def _lock_e2b_ports_if_needed(nodeids) -> None:
    global _e2b_lock
    if _e2b_lock is not None or not any("e2b" in nodeid for nodeid in nodeids):
        return
    lock = FileLock(E2B_LOCK)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        print(
            f"\n[dsagent tests] another test run on this machine holds the E2B loopback ports 49999/49983 "
            f"(lock {E2B_LOCK}); waiting for it to finish (up to {E2B_LOCK_WAIT_SECONDS // 60} min) ...",
            file=sys.__stderr__,
            flush=True,
        )
        try:
            lock.acquire(timeout=E2B_LOCK_WAIT_SECONDS)
        except Timeout:
            raise pytest.UsageError(
                f"another test run kept the E2B loopback ports (lock {E2B_LOCK}) for {E2B_LOCK_WAIT_SECONDS // 60} min; "
                "stop it, or deselect the e2b tests (-k 'not e2b')"
            ) from None
    _e2b_lock = lock  # held until this process exits


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if hasattr(session.config, "workerinput") or exitstatus != 0:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    stats = reporter.stats if reporter is not None else {}
    if not any(stats.get(kind) for kind in ("passed", "failed", "error", "xfailed", "xpassed")):
        print("\n[dsagent tests] no test ran (all skipped or deselected): failing the run", file=sys.__stderr__, flush=True)
        session.exitstatus = pytest.ExitCode.NO_TESTS_COLLECTED
