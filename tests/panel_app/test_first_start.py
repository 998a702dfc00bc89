"""The first start: ``dsagent serve`` on an empty workspace fills it with the demo in the background; ``--no-demo`` does not."""

from __future__ import annotations

import time

import pytest

from .conftest import serve_dashboard

# its own servers (one with the demo), on one xdist worker
pytestmark = pytest.mark.xdist_group("panel-first-start")


def _runs(dashboard) -> list[dict] | None:
    """The runs, or None while the demo's writes keep the store busy (503: the API's "retry in a moment")."""
    status, body = dashboard.get_json("api/runs?limit=100")
    if status == 503:
        return None
    assert status == 200, body
    return body["items"]


def test_an_empty_workspace_fills_with_the_demo_in_the_background(tmp_path):
    with serve_dashboard(tmp_path / "ws", demo=True) as dashboard:
        # the server answers while the demo is still going: it runs in the background
        assert dashboard.get("api/runs?limit=1")[0] in (200, 503)  # 503: busy with the demo's writes, retry
        deadline = time.monotonic() + 120  # a fail-safe on a loaded machine, not a speed check
        runs: list[dict] = []
        while time.monotonic() < deadline:
            runs = _runs(dashboard) or runs
            kinds = {r["kind"] for r in runs}
            if {"notebook", "agent"} <= kinds and all(r["status"] not in ("queued", "running") for r in runs):
                break
            time.sleep(0.25)
        log = (dashboard.home / "demo.log").read_text(errors="replace")
        assert {"notebook", "agent"} <= {r["kind"] for r in runs}, log
        assert {r["status"] for r in runs} == {"succeeded"}, (runs, log)
        status, body = dashboard.get_json("api/artifacts?kind=image&limit=5")
        assert status == 200 and body["items"], "the demo made no plots"
        assert "filling it with the demo" in dashboard.log.read_text()


def test_no_demo_leaves_an_empty_workspace_empty(tmp_path):
    with serve_dashboard(tmp_path / "ws") as dashboard:  # serve_dashboard passes --no-demo
        # the demo, when it runs, is started before the server answers: nothing started means nothing will
        assert _runs(dashboard) == []
        assert not (dashboard.home / "demo.log").exists()
        assert "filling it with the demo" not in dashboard.log.read_text()
