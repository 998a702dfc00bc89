"""`dsagent review NOTEBOOK|RUN`: the reviewer on a saved notebook, nothing executed."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from dsagent.artifacts.models import NewArtifact
from dsagent.artifacts.store import Store
from dsagent.settings import Settings
from dsagent.testing.llm_server import LLMServer, Reply


def notebook(claim: str) -> nbformat.NotebookNode:
    nb = new_notebook()
    nb.cells = [
        new_markdown_cell("# Task\n\nMean of y"),
        new_code_cell("print(df['y'].mean())", outputs=[new_output("stream", name="stdout", text="5.0\n")]),
        new_markdown_cell(f"## Answer\n\n{claim}"),
    ]
    return nb


def review(target: str, llm: LLMServer, home) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OPENAI_BASE_URL": llm.base_url, "OPENAI_API_KEY": "sk-test-0123456789", "DSAGENT_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "dsagent", "review", target, "--json"], env=env, capture_output=True, text=True,
                          timeout=120)


def test_review_of_a_file_flags_a_number_no_output_shows(tmp_path, workspace_home):
    path = tmp_path / "claims.ipynb"
    nbformat.write(notebook("The mean of y is 5.0 and its maximum is 77.7."), path)
    with LLMServer([Reply('{"verdict": "accept", "findings": []}', role="reviewer")]) as llm:
        done = review(str(path), llm, workspace_home)
        sent = llm.requests[0].messages[-1]["content"]
    assert done.returncode == 1, done.stderr
    result = json.loads(done.stdout)
    assert result["verdict"] == "revise" and "77.7, which no output shows" in result["findings"][0]["reason"]
    assert "Mean of y" in sent and "print(df['y'].mean())" in sent and ">>> 5.0" in sent


def test_review_of_a_run_uses_its_notebook_artifact(workspace_home):
    with Store.open(settings=Settings()) as store:
        run = store.create_run("agent", title="mean")
        text = nbformat.writes(notebook("The mean of y is 5.0."))
        store.add_artifacts(run.id, [NewArtifact("run.ipynb", "notebook", "application/x-ipynb+json", text.encode())])
        store.update_run_status(run.id, "succeeded")
        bare = store.create_run("exec", title="no notebook")
    with LLMServer([Reply('{"verdict": "accept", "findings": []}', role="reviewer")]) as llm:
        done = review(str(run.id), llm, workspace_home)
        missing = review(str(bare.id), llm, workspace_home)
        unknown = review("12345", llm, workspace_home)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"target": f"run {run.id}", "verdict": "accept", "findings": [], "source": "checks+reviewer"}
    assert missing.returncode == 2 and "has no notebook artifact" in missing.stderr
    assert unknown.returncode == 2 and "no run with id 12345" in unknown.stderr
