"""What the dashboard does to runs (not just shows): launch and cancel, recording who asked.

Launching: a notebook run or a sweep starts as a child process (``python -m
dsagent run``/``batch``), never inside the server: the run then belongs to a
process of its own (so cancel below works the same for it), a long sweep does
not slow the pages, and a dashboard restart does not stop it. The child is
told who launched it (its run gets a ``launched`` event) and writes its run id
to a file this side waits for (``runs/launch_env.py``), so the page can open
the run's page as soon as the run exists. Its output goes to a log file in
``<workspace>/launches/``; if it exits before creating a run, its last lines
are the error the page shows.

A run belongs to the process that runs it (``dsagent run``/``exec``/``ask``, a
scheduler). That process's ``RunRecorder`` turns SIGTERM into a clean
cancellation: the cell is interrupted, the kernel shut down, the partial
notebook kept, the run marked ``cancelled``. So cancelling from the dashboard
means: write who asked (an event), then send SIGTERM to the owner, checked by
its start time so a reused pid is never signalled.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Mapping

from dsagent.artifacts.store import Store
from dsagent.errors import DsagentError
from dsagent.settings import Settings
from dsagent.workspace import Workspace

__all__ = ["cancel_run", "launch_notebook_run", "launch_sweep", "LAUNCH_WAIT_SECONDS"]

#: how long the page waits for a launched process to create its run (a cold start on a loaded machine takes seconds)
LAUNCH_WAIT_SECONDS = 180.0


def cancel_run(store: Store, run_id: int, user: str, scheduler: Any = None, chat_host: Any = None) -> str:
    """Ask run ``run_id`` to stop (blocking store calls: call it off the event loop); what happened, for the page.

    Runs of this dashboard process are stopped through their owner here, never by a signal (that would stop
    the whole dashboard): ``scheduler``, the dashboard's ``DashboardScheduler``, for its firings;
    ``chat_host``, the ``ChatHost``, for a chat's running turn; the hand-off service for a `dsagent run`."""
    run = store.get_run(run_id)
    if run.done:
        return f"run {run_id} has already ended ({run.status})"
    if chat_host is not None and run.parent_id is not None and chat_host.running_run(run.parent_id) == run_id:
        return chat_host.submit(chat_host.stop(run.parent_id, user=user)).result(timeout=120)  # writes who asked
    owner = store.run_owner(run_id)
    if owner is None or owner.host != socket.gethostname():
        where = f"on {owner.host}" if owner else "by a process dsagent does not know"
        raise DsagentError(f"run {run_id} is run {where}; it cannot be cancelled from here",
                           hint="stop it on the machine that runs it (Ctrl-C or kill -TERM its process)")
    store.append_events(run_id, [("cancel_requested", {"user": user, "via": "dashboard", "owner_pid": owner.pid})])
    if owner.is_gone():
        store.update_run_status(run_id, "cancelled", error=f"cancelled by {user} from the dashboard (its process had ended)")
        return f"run {run_id} marked cancelled (its process had already ended)"
    if owner.pid == os.getpid():
        from dsagent.panel_app.handoff import cancel_served

        if cancel_served(run_id):  # a `dsagent run` handed it to this server: its task here is the run
            return f"cancelling run {run_id}: it runs in this server"
        if scheduler is not None and run.schedule_id and scheduler.cancel_firing(run.schedule_id):
            return f"cancelling run {run_id}: this dashboard's scheduler is stopping its firing of {run.schedule_id}"
        raise DsagentError(f"run {run_id} runs inside the dashboard process itself", hint="stop the dashboard (Ctrl-C) to stop it")
    try:
        os.kill(owner.pid, signal.SIGTERM)
    except ProcessLookupError:
        store.update_run_status(run_id, "cancelled", error=f"cancelled by {user} from the dashboard (its process had ended)")
        return f"run {run_id} marked cancelled (its process had already ended)"
    except PermissionError:
        raise DsagentError(f"not allowed to signal process {owner.pid} that runs run {run_id}",
                           hint="run the dashboard as the same user as the run") from None
    return f"cancelling run {run_id}: asked its process (pid {owner.pid}) to stop"


def launch_notebook_run(settings: Settings, notebook: Path, parameters: Mapping[str, Any], user: str, *,
                        backend: str | None = None) -> int:
    """Start ``dsagent run NOTEBOOK`` with ``parameters`` (typed values) in a child process; the new run's id (blocking)."""
    folder, token = _launch_folder(settings)
    params_file = folder / f"{token}-parameters.yaml"
    params_file.write_text(json.dumps(dict(parameters), default=str), encoding="utf-8")  # JSON is YAML, and keeps the types
    # --no-server: the run stays in the process started here (Cancel signals it; closing the dashboard does not
    # stop it), instead of being handed back to this dashboard by the hand-off
    argv = ["run", str(notebook), "-f", str(params_file), "--no-progress", "--no-server"]
    if backend:
        argv += ["--backend", backend]
    return _launch(settings, argv, user, folder, token, params_file)


def launch_sweep(settings: Settings, notebook: Path, grid: Mapping[str, list[Any]], user: str, *,
                 backend: str | None = None, confirmed: bool = False) -> int:
    """Start ``dsagent batch NOTEBOOK --grid ...`` in a child process; the batch run's id (blocking).

    ``confirmed``: the user agreed to a grid larger than ``batch_confirm_above``
    (passed on as ``--yes``; without it such a grid is refused by the batch itself).
    """
    folder, token = _launch_folder(settings)
    grid_file = folder / f"{token}-grid.yaml"
    grid_file.write_text(json.dumps({k: list(v) for k, v in grid.items()}, default=str), encoding="utf-8")
    argv = ["batch", str(notebook), "--grid", str(grid_file)]
    if backend:
        argv += ["--backend", backend]
    if confirmed:
        argv.append("--yes")
    return _launch(settings, argv, user, folder, token, grid_file)


def _launch_folder(settings: Settings) -> tuple[Path, str]:
    folder = Workspace.from_settings(settings).home / "launches"
    folder.mkdir(parents=True, exist_ok=True)
    return folder, f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"


def _launch(settings: Settings, argv: list[str], user: str, folder: Path, token: str, input_file: Path) -> int:
    from dsagent.runs.launch_env import LAUNCHED_BY_ENV, RUN_ID_FILE_ENV

    id_file = folder / f"{token}.run"
    log_path = folder / f"{token}.log"
    env = {**os.environ, "DSAGENT_HOME": str(Workspace.from_settings(settings).home),
           LAUNCHED_BY_ENV: json.dumps({"user": user, "via": "dashboard"}), RUN_ID_FILE_ENV: str(id_file)}
    with open(log_path, "wb") as log:
        # its own session: Ctrl-C on the dashboard does not stop the run; cancel on the run's page does
        process = subprocess.Popen([sys.executable, "-m", "dsagent", *argv], stdin=subprocess.DEVNULL, stdout=log,
                                   stderr=subprocess.STDOUT, env=env, start_new_session=True)
    threading.Thread(target=process.wait, name=f"reap-{process.pid}", daemon=True).start()  # no zombie when it ends
    deadline = time.monotonic() + LAUNCH_WAIT_SECONDS
    while time.monotonic() < deadline:
        if id_file.exists():
            run_id = int(json.loads(id_file.read_text(encoding="utf-8"))["run_id"])
            for done in (id_file, input_file):  # read by the child before its run existed; the log stays
                done.unlink(missing_ok=True)
            return run_id
        if process.poll() is not None and not id_file.exists():
            raise DsagentError(f"`dsagent {argv[0]}` stopped before its run started: {_last_lines(log_path)}",
                               hint=f"fix what it says and run again (its whole output: {log_path})")
        time.sleep(0.05)
    raise DsagentError(f"`dsagent {argv[0]}` (pid {process.pid}) has not created its run after {LAUNCH_WAIT_SECONDS:.0f} s",
                       hint=f"look for it on the Runs page in a moment; its output: {log_path}")


def _last_lines(path: Path, count: int = 4) -> str:
    try:
        lines = [line for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    except OSError:
        return "(no output)"
    for i, line in enumerate(lines):
        if line.startswith("error"):  # the CLI's own message and its hint, else the tail
            return " ".join(part.strip() for part in lines[i:i + 2])[:600]
    return " ".join(lines[-count:])[:600] or "(no output)"
