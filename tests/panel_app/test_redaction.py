"""A secret of the launching process that plain runs print is stored redacted: events, outputs, notebook, export, REST.

The secret sits in this process's environment under a secret-looking name (so
the kernels do not get it); the code receives the same text another way — as
a notebook parameter, from a file — and prints, displays and raises with it.
Then everything the workspace keeps, and what the dashboard serves from it,
is searched for the secret.
"""

from __future__ import annotations

import asyncio
import io
import json
import zipfile
from pathlib import Path

import nbformat
import pytest

from dsagent.artifacts.store import Store
from dsagent.runs.exec import exec_recorded
from dsagent.runs.notebook_run import execute_notebook_run
from dsagent.settings import Settings
from dsagent.workspace import Workspace

from .conftest import serve_dashboard

pytestmark = pytest.mark.xdist_group("panel-redaction")

SECRET = "sk-live-planted-4f1c9a7e2b"
MARKER = "[redacted PLANTED_SERVICE_TOKEN]"

NOTEBOOK_CELLS = [
    ("token = 'not set'", ["parameters"]),
    ("print('the token is', token)", []),
    ("token", []),
    ("from IPython.display import HTML\nHTML('<b>' + token + '</b>')", []),
]
EXEC_CODE = "secret = open('token.txt').read().strip()\nprint('from the file:', secret)\nraise ValueError('rejected ' + secret)"


def _notebook(path: Path) -> Path:
    nb = nbformat.v4.new_notebook()
    for source, tags in NOTEBOOK_CELLS:
        nb.cells.append(nbformat.v4.new_code_cell(source, metadata={"tags": tags}))
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One notebook run and one exec run on a fresh workspace, with the secret in this process's environment."""
    root = tmp_path_factory.mktemp("redaction")
    home = root / "home"
    work = root / "work"
    work.mkdir()
    (work / "token.txt").write_text(SECRET + "\n")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PLANTED_SERVICE_TOKEN", SECRET)
        patch.setenv("DSAGENT_HOME", str(home))
        settings = Settings(home=str(home), kernel_pool_size=0)

        async def both():
            notebook = await execute_notebook_run(_notebook(root / "report.ipynb"), {"token": SECRET}, backend="local", settings=settings)
            executed = await exec_recorded(EXEC_CODE, backend="local", work_dir=work, settings=settings)
            return notebook, executed

        notebook, executed = asyncio.run(both())
    return home, notebook, executed


def _everything_stored(home: Path, run_ids: list[int]) -> str:
    with Store.open(Workspace(home), Settings(home=str(home))) as store:
        parts = []
        for run_id in run_ids:
            parts.append(json.dumps(store.get_run(run_id).to_json()))
            parts += [json.dumps(event.to_json()) for event in store.events(run_id)]
            parts += [store.read_bytes(a.id).decode("utf-8", "replace") for a in store.list_artifacts(run_id=run_id, limit=500).items]
    return "\n".join(parts)


def test_the_runs_saw_the_secret_and_their_records_hold_only_the_marker(runs):
    home, notebook, executed = runs
    # the code really had the secret: the caller's own Execution keeps what the kernel sent
    assert SECRET in executed.execution.stream_text() and executed.run.status == "failed"
    assert notebook.run.status == "succeeded"
    stored = _everything_stored(home, [notebook.run.id, executed.run.id])
    assert SECRET not in stored
    for where in ("the token is " + MARKER, "from the file: " + MARKER, "rejected " + MARKER, "<b>" + MARKER + "</b>"):
        assert where in stored, where
    assert executed.run.error is None or SECRET not in executed.run.error


def test_the_executed_notebook_file_is_redacted(runs):
    _, notebook, _ = runs
    text = notebook.notebook_path.read_text()
    assert SECRET not in text and MARKER in text


def test_rest_and_export_serve_no_secret(runs):
    home, notebook, executed = runs
    with serve_dashboard(home) as dashboard:
        for run_id in (notebook.run.id, executed.run.id):
            bodies = []
            for path in (f"api/runs/{run_id}", f"api/runs/{run_id}/events?limit=500", f"api/artifacts?run={run_id}&limit=500"):
                status, _, body = dashboard.get(path)
                assert status == 200, (path, body[:300])
                bodies.append(body.decode())
            for item in json.loads(bodies[2])["items"]:
                status, _, body = dashboard.get(f"api/artifacts/{item['id']}")
                assert status == 200
                bodies.append(body.decode("utf-8", "replace"))
            status, _, body = dashboard.get(f"api/runs/{run_id}/export.zip")
            assert status == 200
            with zipfile.ZipFile(io.BytesIO(body)) as archive:
                bodies += [archive.read(name).decode("utf-8", "replace") for name in archive.namelist()]
            served = "\n".join(bodies)
            assert SECRET not in served
            assert MARKER in served
