"""The ``dsagent`` papermill engine, driven by papermill itself (its CLI and its Python API) on real kernels."""

from __future__ import annotations

import subprocess

import nbformat
import papermill
import pytest
from papermill.exceptions import PapermillExecutionError

from notebook_helpers import BIN, cli_env, statuses, write_notebook

PARAMS = "alpha = 0.1\nlabel = 'x'\nsteps = 2"


def test_papermill_cli_with_engine_dsagent_keeps_papermills_features(tmp_path, workspace_home):
    source = write_notebook(
        tmp_path / "in.ipynb",
        "import os\nprint('cwd', os.getcwd())",
        "print('result', alpha * steps, label, type(label).__name__)",
        params=PARAMS,
    )
    (tmp_path / "params.yaml").write_text("steps: 4\n")
    workdir = tmp_path / "work"
    workdir.mkdir()
    out = tmp_path / "out.ipynb"
    done = subprocess.run(
        [str(BIN / "papermill"), str(source), str(out), "--engine", "dsagent", "-p", "alpha", "0.5", "-r", "label", "42",
         "-f", str(tmp_path / "params.yaml"), "--cwd", str(workdir), "--log-output", "--execution-timeout", "60"],
        env=cli_env(workspace_home), capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 0, done.stderr
    nb = nbformat.read(out, as_version=4)
    assert nb.cells[1].metadata.tags == ["injected-parameters"]  # papermill injected after the parameters cell
    assert "alpha = 0.5" in nb.cells[1].source and "label = \"42\"" in nb.cells[1].source and "steps = 4" in nb.cells[1].source
    assert nb.cells[2].outputs[0].text == f"cwd {workdir}\n"  # --cwd is the session's work dir
    assert nb.cells[3].outputs[0].text == "result 2.0 42 str\n"  # -r keeps the string
    assert statuses(nb) == ["completed"] * 4
    meta = nb.cells[3].metadata.papermill
    assert meta["start_time"] and meta["end_time"] and meta["duration"] >= 0 and meta["exception"] is False
    assert nb.metadata.papermill.parameters == {"alpha": 0.5, "label": "42", "steps": 4}
    assert "result 2.0 42 str" in done.stderr  # --log-output goes through papermill's logger
    assert "Executing Cell 4" in done.stderr


def test_papermill_api_failing_cell_gets_papermills_error_cell(tmp_path):
    source = write_notebook(tmp_path / "in.ipynb", "print('before')", "1 / 0", "print('never')", params="n = 1")
    out = tmp_path / "out.ipynb"
    with pytest.raises(PapermillExecutionError) as caught:
        papermill.execute_notebook(str(source), str(out), engine_name="dsagent", backend="local", progress_bar=False, cwd=str(tmp_path))
    assert caught.value.ename == "ZeroDivisionError" and caught.value.exec_count == 3
    nb = nbformat.read(out, as_version=4)
    assert "papermill-error-cell-tag" in nb.cells[0].metadata.tags  # the banner at the top
    anchor = next(i for i, c in enumerate(nb.cells) if c.cell_type == "markdown" and "papermill-error-cell" in c.source and i > 0)
    assert nb.cells[anchor + 1].source == "1 / 0"  # the anchor sits right before the failing cell
    assert nb.cells[anchor - 1].outputs[0].text == "before\n"  # earlier outputs kept
    failed = nb.cells[anchor + 1].metadata.papermill
    assert failed["status"] == "failed" and failed["exception"] is True
    assert nb.cells[anchor + 2].metadata.papermill["status"] == "pending"  # never ran
    assert nb.cells[anchor + 2].outputs == []


def test_papermill_api_unknown_backend_names_the_known_ones(tmp_path):
    source = write_notebook(tmp_path / "in.ipynb", "1")
    with pytest.raises(Exception, match="no kernel backend named 'nosuch'; known: .*local"):
        papermill.execute_notebook(str(source), str(tmp_path / "out.ipynb"), engine_name="dsagent", backend="nosuch", progress_bar=False)
