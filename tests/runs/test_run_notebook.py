"""``dsagent.run_notebook`` on a warm local backend: faults, early exits and bad input, on real kernels."""

from __future__ import annotations

import logging
import time

import nbformat
import pytest
import pytest_asyncio

import dsagent
from dsagent.errors import NotebookError
from dsagent.kernel_gateway.local import LocalBackend
from dsagent.runs.notebook_run import execute_notebook_run

from notebook_helpers import read_runs, run_artifacts, statuses, write_notebook

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def warm(tmp_path_factory):
    """One long-lived backend with a warm pool, as the dashboard or scheduler holds one."""
    from dsagent.settings import Settings

    settings = Settings(home=str(tmp_path_factory.mktemp("pool-home")), kernel_pool_replenish_delay=0)
    async with LocalBackend(settings, pool_size=1) as backend:
        await backend.warm()
        yield backend


def notebook_of(outcome) -> nbformat.NotebookNode:
    return nbformat.read(outcome.notebook_path, as_version=4)


async def test_run_notebook_is_public_and_returns_the_finished_run(tmp_path, warm, workspace_home):
    source = write_notebook(tmp_path / "a.ipynb", "print(n * 2)", params="n = 1")
    start = time.monotonic()
    run = await dsagent.run_notebook(source, {"n": 21}, backend=warm, cwd=tmp_path)
    assert run.status == "succeeded" and run.kind == "notebook" and run.params == {"n": 21} and run.backend == "local"
    assert time.monotonic() - start < 5  # a warm kernel: no cold start
    artifacts, data = run_artifacts(workspace_home, run.id)
    (stored,) = [a for a in artifacts if a.kind == "notebook"]
    assert nbformat.reads(data[stored.id].decode(), as_version=4).cells[2].outputs[0].text == "42\n"


async def test_sys_exit_0_ends_the_notebook_like_papermill_and_succeeds(tmp_path, warm):
    source = write_notebook(tmp_path / "exit0.ipynb", "print('a')", "import sys; sys.exit(0)", "print('after')", params="n = 1")
    outcome = await execute_notebook_run(source, backend=warm, cwd=tmp_path)
    assert outcome.run.status == "succeeded" and outcome.failure is None
    nb = notebook_of(outcome)
    assert nb.cells[3].outputs == [] and statuses(nb)[3] == "pending"  # papermill stops there too


async def test_sys_exit_1_fails_the_run(tmp_path, warm):
    source = write_notebook(tmp_path / "exit1.ipynb", "import sys; sys.exit(1)", "print('after')", params="n = 1")
    outcome = await execute_notebook_run(source, backend=warm, cwd=tmp_path)
    assert outcome.run.status == "failed" and "SystemExit: 1" in outcome.run.error and "cell 2" in outcome.run.error


async def test_kernel_killed_mid_cell_fails_within_5s_naming_the_cell(tmp_path, warm):
    source = write_notebook(
        tmp_path / "die.ipynb", "print('alive')", "import os, signal, time\nprint('dying', flush=True)\n"
        # the pause lets the flushed output leave the kernel's zmq queue before SIGKILL
        "time.sleep(0.3)\nos.kill(os.getpid(), signal.SIGKILL)",
        "print('never')", params="n = 1",
    )
    start = time.monotonic()
    outcome = await execute_notebook_run(source, backend=warm, cwd=tmp_path)
    assert time.monotonic() - start < 5
    assert outcome.run.status == "failed" and outcome.failure.kind == "died"
    assert "cell 3" in outcome.run.error and "kernel died" in outcome.run.error
    nb = notebook_of(outcome)
    dead = next(c for c in nb.cells if c.source.startswith("import os, signal"))
    assert dead.outputs[0].text == "dying\n" and dead.outputs[-1].ename == "KernelDied"
    assert any(c.cell_type == "markdown" and "papermill-error-cell" in c.source for c in nb.cells)


async def test_cell_timeout_interrupts_and_fails_naming_the_timeout(tmp_path, warm):
    source = write_notebook(tmp_path / "slow.ipynb", "import time\nprint('start', flush=True)\ntime.sleep(30)", "print('never')", params="n = 1")
    start = time.monotonic()
    outcome = await execute_notebook_run(source, backend=warm, cwd=tmp_path, timeout=1)
    assert time.monotonic() - start < 10
    assert outcome.run.status == "failed" and outcome.failure.kind == "timeout"
    assert "timed out" in outcome.run.error and "1s timeout" in outcome.run.error
    nb = notebook_of(outcome)
    slow = next(c for c in nb.cells if c.source.startswith("import time"))
    assert [o.get("ename") for o in slow.outputs] == [None, "ExecutionTimeout"]  # our interrupt's KeyboardInterrupt is replaced
    assert statuses(nb)[-2:] == ["failed", "pending"]


async def test_old_nbformat_v3_is_upgraded_and_runs(tmp_path, warm):
    v4 = nbformat.read(write_notebook(tmp_path / "v4.ipynb", "print(n + 1)", params="n = 1"), as_version=4)
    v3 = nbformat.convert(v4, 3)
    (tmp_path / "old.ipynb").write_text(nbformat.writes(v3, version=nbformat.NO_CONVERT))
    assert '"nbformat": 3' in (tmp_path / "old.ipynb").read_text()
    outcome = await execute_notebook_run(tmp_path / "old.ipynb", {"n": 41}, backend=warm, cwd=tmp_path, kernel_name="python3")
    assert outcome.run.status == "succeeded"
    nb = notebook_of(outcome)
    assert nb.nbformat == 4 and nb.cells[-1].outputs[0].text == "42\n"


async def test_unknown_parameter_is_an_error_unless_allowed_then_injected_like_papermill(tmp_path, warm, caplog, workspace_home):
    source = write_notebook(tmp_path / "u.ipynb", "print(extra)", params="n = 1\nextras = 2")
    with pytest.raises(NotebookError) as refused:
        await dsagent.run_notebook(source, {"extar": 5}, backend=warm, cwd=tmp_path)
    assert refused.value.message == "u.ipynb has no parameter 'extar' (did you mean 'extras'?); its parameters: n, extras"
    assert refused.value.reason == "unknown_parameter" and "allow_unknown_parameters=True" in refused.value.hint
    assert read_runs(workspace_home) == []  # refused before any run existed
    with caplog.at_level(logging.WARNING):
        outcome = await execute_notebook_run(source, {"extra": 5}, backend=warm, cwd=tmp_path, allow_unknown_parameters=True)
    assert outcome.run.status == "succeeded"
    assert outcome.warnings == ["the notebook has no parameter 'extra' (it is injected anyway, as papermill does)"]
    assert "no parameter 'extra'" in caplog.text


@pytest.mark.parametrize(
    ("kwargs", "reason", "message"),
    [
        ({"parameters": {"rate": "fast"}}, "bad_parameter", "parameter 'rate' of p.ipynb takes a float (default 0.1), got str 'fast'"),
        ({"text_parameters": {"n": "many"}}, "bad_parameter", "parameter 'n' of p.ipynb takes a int (default 3), got str 'many'"),
        ({"parameters": {"flag": 1}}, "bad_parameter", "parameter 'flag' of p.ipynb takes a bool"),
        ({"output_path": "missing/out.ipynb"}, "bad_output", "the folder missing does not exist"),
    ],
    ids=["float-got-str", "int-got-text", "bool-got-int", "output-folder-missing"],
)
async def test_bad_input_is_refused_before_any_run_exists(tmp_path, warm, workspace_home, monkeypatch, kwargs, reason, message):
    monkeypatch.chdir(tmp_path)
    source = write_notebook(tmp_path / "p.ipynb", "print(rate)", params="rate = 0.1\nn = 3\nflag = True")
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(NotebookError) as caught:
        await execute_notebook_run(source, backend=warm, cwd=tmp_path, **kwargs)
    assert caught.value.reason == reason and message in str(caught.value) and caught.value.hint
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "dsagent-home") == before  # no partial output, no scratch folders
    assert read_runs(workspace_home) == []


@pytest.mark.parametrize(
    ("content", "reason", "message"),
    [
        (None, "not_found", "no notebook at"),
        ('{"cells": []}', "not_a_notebook", "has no 'nbformat' and 'cells'"),
        ("{\"nbformat\": 4, \"cells\": [", "not_a_notebook", "it is not JSON"),
    ],
    ids=["missing", "json-but-not-a-notebook", "truncated"],
)
async def test_unreadable_notebooks_are_clear_errors(tmp_path, content, reason, message):
    path = tmp_path / "x.ipynb"
    if content is not None:
        path.write_text(content)
    with pytest.raises(NotebookError) as caught:
        await execute_notebook_run(path, backend="local")
    assert caught.value.reason == reason and message in str(caught.value)


async def test_missing_or_foreign_kernelspec_is_a_clear_error(tmp_path):
    bare = write_notebook(tmp_path / "bare.ipynb", "1", kernelspec=None)
    with pytest.raises(NotebookError, match="names no kernelspec") as caught:
        await execute_notebook_run(bare, backend="local")
    assert "--kernel python3" in caught.value.hint and caught.value.reason == "no_kernelspec"
    r_notebook = write_notebook(tmp_path / "r.ipynb", "1", kernelspec={"name": "ir", "display_name": "R", "language": "R"})
    with pytest.raises(NotebookError, match="written for a r kernel") as caught:
        await execute_notebook_run(r_notebook, backend="local")
    assert caught.value.reason == "wrong_language"
