"""``dsagent run`` and ``dsagent inspect`` as a user runs them: fresh processes, real kernels, a real workspace store."""

from __future__ import annotations

import json
import signal
import subprocess
import time

import nbformat
import psutil
import pytest

from notebook_helpers import BIN, cli_env, read_runs, run_artifacts, run_cli, statuses, write_notebook


def test_run_records_the_run_its_cells_and_the_notebook(tmp_path, workspace_home):
    source = write_notebook(
        tmp_path / "report.ipynb",
        "with open('summary.txt', 'w') as f:\n    f.write(f'{rate * 2} {region}')",
        "print(rate, region, type(region).__name__)",
        params="rate = 0.1  # growth rate\nregion = 'north'",
    )
    (tmp_path / "p.yaml").write_text("rate: 0.25\n")
    out = tmp_path / "out.ipynb"
    done = run_cli(workspace_home, "run", str(source), "-f", str(tmp_path / "p.yaml"), "-p", "region", "2024", "-o", str(out), "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["status"] == "succeeded" and report["kind"] == "notebook" and report["notebook"] == str(out)
    assert report["params"] == {"rate": 0.25, "region": "2024"}  # declared str: -p keeps the text
    nb = nbformat.read(out, as_version=4)
    assert nb.cells[3].outputs[0].text == "0.25 2024 str\n"
    assert statuses(nb) == ["completed"] * 4
    artifacts, data = run_artifacts(workspace_home, report["id"])
    by_kind = {a.kind: a for a in artifacts}
    assert nbformat.reads(data[by_kind["notebook"].id].decode(), as_version=4).cells[3].outputs[0].text == "0.25 2024 str\n"
    summary = by_kind["file"]
    assert summary.name == "summary.txt" and summary.cell == 2 and data[summary.id] == b"0.5 2024"
    assert not (tmp_path / ".dsagent").exists()  # the DataFrame capture's scratch folder is cleaned up


def test_failing_cell_fails_the_run_names_the_cell_and_keeps_earlier_work(tmp_path, workspace_home):
    source = write_notebook(
        tmp_path / "bad.ipynb", "open('early.txt', 'w').write('kept')\nprint('early')", "{}['missing']", "print('never')", params="n = 1"
    )
    out = tmp_path / "out.ipynb"
    done = run_cli(workspace_home, "run", str(source), "-o", str(out))
    assert done.returncode == 1
    assert "cell 3 (In [3]) raised: KeyError: 'missing'" in done.stderr and str(out) in done.stderr
    (run,) = read_runs(workspace_home)
    assert run.status == "failed" and "KeyError" in run.error and "cell 3" in run.error
    nb = nbformat.read(out, as_version=4)
    assert "papermill-error-cell-tag" in nb.cells[0].metadata.tags
    assert [c.outputs[0].text for c in nb.cells if c.cell_type == "code" and c.outputs and c.outputs[0].output_type == "stream"] == ["early\n"]
    artifacts, data = run_artifacts(workspace_home, run.id)
    assert {a.kind for a in artifacts} == {"notebook", "file"}
    stored = nbformat.reads(data[next(a.id for a in artifacts if a.kind == "notebook")].decode(), as_version=4)
    assert any(o.get("ename") == "KeyError" for c in stored.cells for o in c.get("outputs", []))


def _as_in_a_terminal() -> None:
    """Give the child a default SIGINT, as a shell gives its foreground job.

    A test run started in the background by a shell without job control
    (`cmd &` in a script, CI runners) inherits SIGINT *ignored*, and so would
    `dsagent run`: Python and asyncio keep an inherited ignore, as background
    jobs should. Ctrl-C in a terminal is what this test is about.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_mid_cell_cancels_stores_the_partial_notebook_and_leaves_no_kernel(tmp_path, workspace_home, signum):
    source = write_notebook(
        tmp_path / "slow.ipynb",
        "print('first', flush=True)",
        "import os, time\nprint('kernel', os.getpid(), flush=True)\ntime.sleep(60)",
        "print('never')",
        params="n = 1",
    )
    out = tmp_path / "partial.ipynb"
    proc = subprocess.Popen(
        [str(BIN / "dsagent"), "run", str(source), "-o", str(out), "--log-output", "--no-progress"],
        env=cli_env(workspace_home), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=_as_in_a_terminal,
    )
    try:
        kernel_pid = None
        deadline = time.monotonic() + 60
        while kernel_pid is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            assert line, f"dsagent run ended early: {proc.stderr.read()}"
            if line.startswith("kernel "):
                kernel_pid = int(line.split()[1])
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "cancelled" in err and "partial notebook" in err
    (run,) = read_runs(workspace_home)
    assert run.status == "cancelled"
    nb = nbformat.read(out, as_version=4)
    assert statuses(nb) == ["completed", "completed", "failed", "pending"]  # the cell that never ran is not "completed"
    assert nb.cells[2].outputs[0].text.startswith("kernel ") and nb.cells[2].outputs[-1].ename == "Cancelled"
    artifacts, _ = run_artifacts(workspace_home, run.id)
    assert [a.kind for a in artifacts] == ["notebook"]
    assert not psutil.pid_exists(kernel_pid) or psutil.Process(kernel_pid).status() == psutil.STATUS_ZOMBIE


def test_bad_input_is_a_clear_error_and_leaves_nothing_behind(tmp_path, workspace_home):
    (tmp_path / "notes.ipynb").write_text("just some text")
    done = run_cli(workspace_home, "run", str(tmp_path / "notes.ipynb"))
    assert done.returncode == 2
    assert "is not a Jupyter notebook: it is not JSON" in done.stderr and "hint:" in done.stderr
    good = write_notebook(tmp_path / "good.ipynb", "1")
    done = run_cli(workspace_home, "run", str(good), "-o", str(tmp_path / "missing" / "out.ipynb"))
    assert done.returncode == 2 and "the folder" in done.stderr and "does not exist" in done.stderr
    assert not (tmp_path / "missing").exists()
    assert not workspace_home.exists()  # nothing was started, so no workspace either


def test_inspect_lists_parameters_with_types_defaults_and_help(tmp_path, workspace_home):
    source = write_notebook(tmp_path / "p.ipynb", "1", params="rate = 0.1  # growth rate\nn: int = 3\nname = 'x'\nitems = [1, 2]")
    done = run_cli(workspace_home, "inspect", str(source))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["NAME", "TYPE", "DEFAULT", "HELP"]
    assert lines[1].split() == ["rate", "float", "0.1", "growth", "rate"]
    assert lines[2].split() == ["n", "int", "3"] and lines[3].split() == ["name", "str", "'x'"]
    assert lines[4].split() == ["items", "list", "[1,", "2]"]
    done = run_cli(workspace_home, "inspect", str(source), "--json")
    assert json.loads(done.stdout.splitlines()[0]) == {"name": "rate", "type": "float", "default": "0.1", "help": "growth rate"}
