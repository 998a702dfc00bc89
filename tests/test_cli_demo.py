"""`dsagent demo`, which `dsagent serve` runs in the background on an empty workspace: every step of the tour works."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nbformat


def test_demo_tours_kernel_notebook_and_agent(workspace_home):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "DSAGENT_"))}
    env["DSAGENT_HOME"] = str(workspace_home)
    done = subprocess.run([sys.executable, "-m", "dsagent", "demo"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "1. a warm pool of sandbox kernels" in out and "[image/png saved to" in out
    assert "2. the demo notebook sales_cohorts.ipynb" in out and "succeeded" in out.split("2. the demo notebook")[1].split("\n")[1]
    assert "3. the analysis agent" in out and "· review: accept" in out
    agent_line = next(line for line in out.splitlines() if line.strip().startswith("its notebook"))
    notebook = Path(agent_line.split(": ", 1)[1])
    assert nbformat.read(notebook, as_version=4).cells[0].metadata.tags == ["parameters"]
    repo_notebooks = Path(__file__).resolve().parents[1] / "notebooks"
    assert repo_notebooks.stat().st_uid == os.getuid()  # the sandbox never got the repository's folder
    assert not (repo_notebooks / "cohort_retention.csv").exists()  # the notebook's files went to the workspace
