"""Notebook runs (papermill engine, run_notebook, `dsagent run`) on every backend besides `local`
(tests/runs/ covers `local` in depth): sandbox, a real Kernel Gateway and Jupyter Server on loopback,
and E2B through the SDK's debug mode against the loopback server."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import nbformat
import papermill
import pytest
from remote_servers import RunningServer, jupyter_server, kernel_gateway, no_kernel_leaks  # noqa: F401 (fixtures)

from dsagent.runs.notebook_run import execute_notebook_run
from dsagent.settings import Settings

pytest_plugins = ["e2b_fixtures"]

KERNELSPEC = {"name": "python3", "display_name": "Python 3", "language": "python"}


def write_notebook(path: Path, *cells: str, params: str = "n = 1") -> Path:
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": KERNELSPEC})
    nb.cells = [nbformat.v4.new_code_cell(params), *(nbformat.v4.new_code_cell(c) for c in cells)]
    nb.cells[0].metadata["tags"] = ["parameters"]
    nbformat.write(nb, path)
    return path


# the servers' tests run in one xdist group each (see tests/conftest.py), so each worker starts no server it does not need
@pytest.fixture(params=[
    "sandbox",
    pytest.param("kernelgateway", marks=pytest.mark.xdist_group("jupyter-servers")),
    pytest.param("jupyter-server", marks=pytest.mark.xdist_group("jupyter-servers")),
    pytest.param("e2b", marks=pytest.mark.xdist_group("e2b")),
])
def backend_name(request, monkeypatch) -> Iterator[str]:
    """The backend's name, with the environment that points it at its server (as a user would set it)."""
    if request.param in ("kernelgateway", "jupyter-server"):
        server: RunningServer = request.getfixturevalue("kernel_gateway" if request.param == "kernelgateway" else "jupyter_server")
        monkeypatch.setenv("DSAGENT_JUPYTER_URL", server.url)
        monkeypatch.setenv("DSAGENT_JUPYTER_TOKEN", server.token)
        with no_kernel_leaks(server):
            yield "jupyter"
        return
    if request.param == "e2b":
        request.getfixturevalue("e2b_debug")
    yield request.param


def test_papermill_engine_runs_a_parameterized_notebook(tmp_path, backend_name):
    source = write_notebook(tmp_path / "a.ipynb", "print(n * 2)")
    out = tmp_path / "out.ipynb"
    papermill.execute_notebook(str(source), str(out), parameters={"n": 21}, engine_name="dsagent", backend=backend_name,
                               progress_bar=False)
    nb = nbformat.read(out, as_version=4)
    assert nb.cells[-1].outputs[0].text == "42\n"
    assert nb.cells[1].metadata.tags == ["injected-parameters"]


async def test_a_failing_cell_fails_the_run_and_keeps_earlier_outputs(tmp_path, backend_name):
    source = write_notebook(tmp_path / "f.ipynb", "print('before')", "1 / 0", "print('never')")
    outcome = await execute_notebook_run(source, backend=backend_name, settings=Settings())
    assert outcome.run.status == "failed" and "ZeroDivisionError" in outcome.run.error and "cell 3" in outcome.run.error
    assert outcome.run.backend == backend_name
    nb = nbformat.read(outcome.notebook_path, as_version=4)
    assert any(o.get("text") == "before\n" for c in nb.cells for o in c.get("outputs", []))


async def test_kernel_death_and_timeout_are_reported_fast(tmp_path, backend_name):
    die = write_notebook(tmp_path / "die.ipynb", "import os, time\nprint('dying', flush=True)\ntime.sleep(0.3)\nos._exit(1)",
                         "print('never')")
    start = time.monotonic()
    outcome = await execute_notebook_run(die, backend=backend_name, settings=Settings())
    assert time.monotonic() - start < 30  # includes a cold kernel start on this backend
    assert outcome.run.status == "failed" and outcome.failure.kind == "died" and "kernel died" in outcome.run.error
    slow = write_notebook(tmp_path / "slow.ipynb", "import time\ntime.sleep(30)", "print('never')")
    outcome = await execute_notebook_run(slow, backend=backend_name, settings=Settings(), timeout=1)
    assert outcome.run.status == "failed" and outcome.failure.kind == "timeout" and "timed out" in outcome.run.error


def test_dsagent_run_cli(tmp_path, backend_name, workspace_home):
    source = write_notebook(tmp_path / "c.ipynb", "print(n + 1)")
    done = subprocess.run([sys.executable, "-m", "dsagent", "run", str(source), "-p", "n", "41", "--backend", backend_name,
                           "-o", str(tmp_path / "c-out.ipynb")], env=dict(os.environ), capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    assert nbformat.read(tmp_path / "c-out.ipynb", as_version=4).cells[-1].outputs[0].text == "42\n"
