"""The first start: ``dsagent serve`` on an empty workspace fills it with the demo (``dsagent demo``) in the background;
``--no-demo`` does not. The demo's own output (its log) is checked here too: every step of the tour works."""

from __future__ import annotations

import os
import time
from pathlib import Path

import nbformat
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


def _embedded_defaults_env(home: Path) -> dict[str, str]:
    """What `make serve` runs with: no OPENAI_/DSAGENT_ settings (so the default backend, sandbox), only the
    workspace and the dashboard's quicker polling for the test."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "DSAGENT_"))}
    return {**env, "DSAGENT_HOME": str(home), "DSAGENT_DASHBOARD_POLL_INTERVAL": "0.25"}


def _demo_output(home: Path, deadline: float) -> str:
    """The demo's log once it has printed its last line."""
    log = home / "demo.log"
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace") if log.exists() else ""
        if "\ndone. workspace:" in text:
            return text
        time.sleep(0.25)
    raise AssertionError(f"the demo did not finish: {log.read_text(errors='replace') if log.exists() else 'no demo.log'}")


def _check_the_tour(out: str) -> None:
    assert "1. a warm pool of sandbox kernels" in out and "[image/png saved to" in out, out
    assert "2. the demo notebook sales_cohorts.ipynb" in out and "succeeded" in out.split("2. the demo notebook")[1].split("\n")[1], out
    assert "3. the analysis agent" in out and "· review: accept" in out, out
    agent_line = next(line for line in out.splitlines() if line.strip().startswith("its notebook"))
    notebook = Path(agent_line.split(": ", 1)[1])
    assert nbformat.read(notebook, as_version=4).cells[0].metadata.tags == ["parameters"]
    repo_notebooks = Path(__file__).resolve().parents[2] / "notebooks"
    assert repo_notebooks.stat().st_uid == os.getuid()  # the sandbox never got the repository's folder
    assert not (repo_notebooks / "cohort_retention.csv").exists()  # the notebook's files went to the workspace


def test_an_empty_workspace_fills_with_the_demo_in_the_background(tmp_path):
    home = tmp_path / "ws"
    with serve_dashboard(home, demo=True, env=_embedded_defaults_env(home)) as dashboard:
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
        _check_the_tour(_demo_output(dashboard.home, deadline))


def test_no_demo_leaves_an_empty_workspace_empty(tmp_path):
    with serve_dashboard(tmp_path / "ws") as dashboard:  # serve_dashboard passes --no-demo
        # the demo, when it runs, is started before the server answers: nothing started means nothing will
        assert _runs(dashboard) == []
        assert not (dashboard.home / "demo.log").exists()
        assert "filling it with the demo" not in dashboard.log.read_text()
