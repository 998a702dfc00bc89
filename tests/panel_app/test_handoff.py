"""``dsagent run`` hands its run to a ``dsagent serve`` on the same workspace (real server and CLI processes)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import psutil
import pytest

from dsagent.runs.handoff import ADVERT_NAME, _start_time, find_server

from .conftest import dsagent_env, serve_dashboard

sys.path.insert(0, str(Path(__file__).parents[1] / "runs"))
from notebook_helpers import read_runs, statuses, write_notebook  # noqa: E402

pytestmark = pytest.mark.xdist_group("panel-handoff")
DSAGENT = [sys.executable, "-m", "dsagent"]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    home = tmp_path_factory.mktemp("handoff") / "ws"
    with serve_dashboard(home) as dashboard:
        deadline = time.monotonic() + 30
        while not (home / ADVERT_NAME).exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        yield dashboard
    assert not (home / ADVERT_NAME).exists(), "a clean stop removes the advert"


def _run(home: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*DSAGENT, "run", *args], env=dsagent_env(home), capture_output=True, text=True, timeout=timeout)


def _outputs(path: Path) -> list[list[dict]]:
    nb = nbformat.read(path, as_version=4)
    return [[{k: v for k, v in out.items() if k != "execution_count"} for out in cell.get("outputs", [])] for cell in nb.cells]


def test_advert_is_private_and_names_the_live_server(served):
    path = served.home / ADVERT_NAME
    assert path.stat().st_mode & 0o777 == 0o600
    advert = json.loads(path.read_text())
    assert advert["pid"] == served.process.pid and advert["port"] == int(served.url.rsplit(":", 1)[1].strip("/"))
    status, body = served.get_json("api/handoff/runs/1")  # no token: refused
    assert status == 403 and "token" in body["error"]


def test_a_handed_off_run_gives_the_same_notebook_exit_code_and_lines_as_a_local_run(served, tmp_path):
    source = write_notebook(tmp_path / "nb.ipynb", "print(n * 2)", "import sys; print('err', file=sys.stderr)", params="n = 1")
    there = _run(served.home, str(source), "-p", "n", "21", "-o", str(tmp_path / "served.ipynb"), "--log-output")
    here = _run(served.home, str(source), "-p", "n", "21", "-o", str(tmp_path / "local.ipynb"), "--log-output", "--no-server")
    assert there.returncode == here.returncode == 0, there.stderr + here.stderr
    assert f"by dsagent serve, pid {served.process.pid}" in there.stderr and "by dsagent serve" not in here.stderr
    assert _outputs(tmp_path / "served.ipynb") == _outputs(tmp_path / "local.ipynb")
    for done in (there, here):
        lines = done.stdout.splitlines()
        assert lines[0] == "42" and lines[-1].startswith("run ") and " succeeded in " in lines[-1]
    def progress(err: str) -> list[str]:  # the cells' stderr and the progress lines, timings left out
        return [line.split(" in ")[0] for line in err.splitlines()[1:]]

    assert progress(there.stderr) == progress(here.stderr) and "cell 4/4 ok" in progress(there.stderr) and "err" in progress(there.stderr)
    runs = {r.id: r for r in read_runs(served.home)}
    served_run = runs[int(there.stderr.split("run ", 1)[1].split(":", 1)[0])]
    assert served_run.status == "succeeded" and served_run.params == {"n": 21}
    assert served_run.owner_pid == served.process.pid  # the server owns it; the local run its own process


def test_a_failing_cell_and_bad_input_end_as_they_would_locally(served, tmp_path):
    source = write_notebook(tmp_path / "bad.ipynb", "1/0", params="n = 1")
    done = _run(served.home, str(source), "--json")
    assert done.returncode == 1 and "ZeroDivisionError" in done.stderr and json.loads(done.stdout)["status"] == "failed"
    missing = _run(served.home, str(tmp_path / "nope.ipynb"))
    assert missing.returncode == 2 and "hint:" in missing.stderr and "by dsagent serve" not in missing.stderr



def test_a_misspelt_parameter_is_refused_by_the_server_as_it_is_locally(served, tmp_path):
    source = write_notebook(tmp_path / "typo.ipynb", "print(region)", params="region = 'all'\ntop_n = 5")
    for extra in ([], ["--no-server"]):
        done = _run(served.home, str(source), "-p", "regoin", "north", *extra)
        assert done.returncode == 2, done.stderr
        assert "has no parameter 'regoin' (did you mean 'region'?); its parameters: region, top_n" in done.stderr
        assert "--allow-unknown-parameters" in done.stderr and "by dsagent serve" not in done.stderr
    # papermill's behaviour on request: injected, the run goes on
    allowed = _run(served.home, str(source), "-p", "regoin", "north", "--allow-unknown-parameters")
    assert allowed.returncode == 0 and "by dsagent serve" in allowed.stderr and allowed.stdout.startswith("run "), allowed.stderr


def _as_in_a_terminal() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # see tests/runs/test_run_cli.py: a shell's foreground job


def test_ctrl_c_cancels_the_run_on_the_server(served, tmp_path):
    source = write_notebook(tmp_path / "slow.ipynb", "import os, time\nprint('kernel', os.getpid(), flush=True)\ntime.sleep(60)",
                            "print('never')", params="n = 1")
    out = tmp_path / "partial.ipynb"
    cli = subprocess.Popen([*DSAGENT, "run", str(source), "-o", str(out), "--log-output", "--no-progress"], env=dsagent_env(served.home),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_as_in_a_terminal)
    try:
        line = cli.stdout.readline()
        assert line.startswith("kernel "), cli.stderr.read()
        kernel = psutil.Process(int(line.split()[1]))
        cli.send_signal(signal.SIGINT)
        _, err = cli.communicate(timeout=60)
    finally:
        cli.kill()
    assert cli.returncode == 130 and "cancelled; partial notebook" in err, err
    run = next(r for r in read_runs(served.home) if r.title == "slow.ipynb")
    assert run.status == "cancelled" and run.owner_pid == served.process.pid
    assert statuses(nbformat.read(out, as_version=4)) == ["completed", "failed", "pending"]
    psutil.wait_procs([kernel], timeout=30)
    assert not kernel.is_running() or kernel.status() == psutil.STATUS_ZOMBIE
    assert served.process.poll() is None  # the server goes on


def _advert(home: Path, pid: int, started: str, port: int) -> None:
    home.mkdir(parents=True, exist_ok=True)
    (home / ADVERT_NAME).write_text(json.dumps({"pid": pid, "started": started, "port": port, "token": "t"}))


def test_a_stale_advert_is_ignored_and_an_unreachable_server_means_a_local_run_said_once(tmp_path):
    home = tmp_path / "ws"
    gone = subprocess.Popen(["true"])
    gone.wait()
    _advert(home, gone.pid, "1", 1)  # its server was killed: the pid is gone
    assert find_server(home) is None
    _advert(home, os.getpid(), "1", 1)  # a live pid, but another process than the one that wrote it
    assert find_server(home) is None
    # a live process (this test) that takes no requests: the CLI says so once and runs the notebook itself
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    _advert(home, os.getpid(), _start_time(os.getpid()), port)
    done = _run(home, str(write_notebook(tmp_path / "nb.ipynb", "print(n + 1)", params="n = 1")), "--log-output")
    assert done.returncode == 0 and done.stdout.startswith("2\n"), done.stderr
    assert done.stderr.count("did not take the run") == 1 and "running it here" in done.stderr
    assert [r.status for r in read_runs(home)] == ["succeeded"]


def test_cancel_on_the_run_page_cancels_a_handed_off_run_and_the_cli_says_so(served, new_page, tmp_path):
    source = write_notebook(tmp_path / "page.ipynb", "import time\nprint('waiting', flush=True)\ntime.sleep(60)", params="n = 1")
    cli = subprocess.Popen([*DSAGENT, "run", str(source), "--log-output", "--no-progress"], env=dsagent_env(served.home),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert cli.stdout.readline() == "waiting\n", cli.stderr.read()
        run = next(r for r in read_runs(served.home) if r.title == "page.ipynb")
        page, problems = new_page(served.url)
        page.goto(f"/run?id={run.id}")
        page.get_by_text("cell started").first.wait_for(timeout=60_000)
        page.get_by_role("button", name="Cancel run").click()
        page.locator("span", has_text="cancelled").first.wait_for(timeout=60_000)
        _, err = cli.communicate(timeout=60)
    finally:
        cli.kill()
    assert cli.returncode == 130 and f"run {run.id} cancelled" in err, err
    _, events = served.get_json(f"api/runs/{run.id}/events")
    assert any(e["type"] == "cancel_requested" and e["payload"]["via"] == "dashboard" for e in events["items"])
    assert problems.items == []
