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

from dsagent.artifacts.store import Store
from dsagent.errors import DsagentError

__all__ = ["cancel_run"]


def cancel_run(store: Store, run_id: int, user: str) -> str:
    """Ask run ``run_id`` to stop (blocking store calls: call it off the event loop); what happened, for the page."""
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
        from dsagent.panel_app.handoff import cancel_served

        if cancel_served(run_id):  # a `dsagent run` handed it to this server: its task here is the run
            return f"cancelling run {run_id}: it runs in this server"
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
