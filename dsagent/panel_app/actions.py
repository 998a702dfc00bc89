"""What the dashboard does to runs (not just shows): cancel, recording who asked.

A run belongs to the process that runs it (``dsagent run``/``exec``/``ask``, a
scheduler). That process's ``RunRecorder`` turns SIGTERM into a clean
cancellation: the cell is interrupted, the kernel shut down, the partial
notebook kept, the run marked ``cancelled``. So cancelling from the dashboard
means: write who asked (an event), then send SIGTERM to the owner, checked by
its start time so a reused pid is never signalled.
"""

from __future__ import annotations

import os
import signal
import socket
from typing import Any

from dsagent.artifacts.store import Store
from dsagent.errors import DsagentError

__all__ = ["cancel_run"]


def cancel_run(store: Store, run_id: int, user: str, scheduler: Any = None) -> str:
    """Ask run ``run_id`` to stop (blocking store calls: call it off the event loop); what happened, for the page.

    ``scheduler``: the dashboard's own ``DashboardScheduler``, whose firings run in this process and are
    cancelled through it (a signal would stop the whole dashboard)."""
    run = store.get_run(run_id)
    if run.done:
        return f"run {run_id} has already ended ({run.status})"
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
