"""What a ``dsagent run``/``batch`` process started by the dashboard is told through its environment.

The dashboard (``panel_app/actions.py``) starts runs as child processes, so a
cancel can SIGTERM them and the server stays responsive. Two variables carry
what it needs back: ``DSAGENT_LAUNCHED_BY`` (JSON, the payload of the run's
``launched`` event: who, from where) and ``DSAGENT_RUN_ID_FILE`` (where the
child writes the id of the run it created, so the page can open it at once).
The CLI takes both out of its environment before any kernel starts, so a
notebook that itself calls ``dsagent run`` does not inherit them.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["LAUNCHED_BY_ENV", "RUN_ID_FILE_ENV", "LaunchInfo", "take_launch_env"]

LAUNCHED_BY_ENV = "DSAGENT_LAUNCHED_BY"
RUN_ID_FILE_ENV = "DSAGENT_RUN_ID_FILE"


@dataclass(frozen=True)
class LaunchInfo:
    launched: dict[str, Any] | None = None
    id_file: Path | None = None

    def report(self, run_id: int) -> None:
        """Tell the launcher the run's id (whole file, one rename: it never reads half of it)."""
        if self.id_file is None:
            return
        partial = self.id_file.with_name(self.id_file.name + ".part")
        partial.write_text(json.dumps({"run_id": run_id}), encoding="utf-8")
        os.replace(partial, self.id_file)


def take_launch_env() -> LaunchInfo:
    """Read and remove the launcher's variables from this process's environment."""
    raw = os.environ.pop(LAUNCHED_BY_ENV, None)
    id_file = os.environ.pop(RUN_ID_FILE_ENV, None)
    launched = None
    if raw:
        try:
            value = json.loads(raw)
        except ValueError:
            value = None
        launched = value if isinstance(value, dict) else {"via": str(raw)}
    return LaunchInfo(launched, Path(id_file) if id_file else None)
