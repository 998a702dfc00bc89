"""Work dirs lent to the sandbox's uid, recorded in the workspace so that a crashed lender's loans come back.

As root, a sandboxed kernel runs as ``sandbox_uid``, so a work dir the user
chose (a notebook's folder, papermill's cwd) is chowned to that uid for the
kernel's lifetime and given back when the kernel shuts down. A ``kill -9`` of
the process that lent it skips the giving back (the sandbox dies with its
parent, the folder stays the sandbox's). Each loan is therefore written down
first, one small JSON file per loan under ``<workspace>/sandbox-loans/``, and
the next sandbox start on the workspace gives back every folder whose lender
is gone.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from pathlib import Path

import psutil

__all__ = ["LOANS_DIR", "Loan", "lend", "reclaim"]

log = logging.getLogger(__name__)

LOANS_DIR = "sandbox-loans"


def _lender() -> tuple[int, float]:
    """This process, as pid + start time (a pid alone may be reused after a crash)."""
    return os.getpid(), psutil.Process().create_time()


def _alive(pid: int, started: float) -> bool:
    try:
        return abs(psutil.Process(pid).create_time() - started) < 0.01
    except psutil.Error:
        return False


class Loan:
    """One lent folder: its owner before the loan, and the record that outlives a crash."""

    def __init__(self, path: Path, uid: int, gid: int, record: Path | None) -> None:
        self.path, self.uid, self.gid, self.record = path, uid, gid, record

    def give_back(self) -> None:
        try:
            os.chown(self.path, self.uid, self.gid)
        except FileNotFoundError:  # gone with its session folder
            pass
        if self.record is not None:
            self.record.unlink(missing_ok=True)


def lend(workspace_home: Path | None, path: Path, uid: int, gid: int) -> Loan:
    """Note that ``path`` (owned by ``uid:gid``) is about to be lent; write the record before the chown."""
    record = None
    if workspace_home is not None:
        folder = workspace_home / LOANS_DIR
        pid, started = _lender()
        try:
            folder.mkdir(parents=True, exist_ok=True)
            record = folder / f"{pid}-{uuid.uuid4().hex[:8]}.json"
            record.write_text(json.dumps({"path": str(path), "uid": uid, "gid": gid, "pid": pid, "started": started}))
        except OSError as exc:  # a read-only workspace: the loan still works, only a crash would not be repaired
            log.warning("could not record the loan of %s in %s: %s", path, folder, exc)
            record = None
    return Loan(path, uid, gid, record)


def reclaim(workspace_home: Path) -> list[Path]:
    """Give back the folders lent by processes that are gone (killed before they could); the folders returned."""
    folder = workspace_home / LOANS_DIR
    returned: list[Path] = []
    for record in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            data = json.loads(record.read_text())
            loan = Loan(Path(data["path"]), int(data["uid"]), int(data["gid"]), record)
            if _alive(int(data["pid"]), float(data["started"])):
                continue
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("unreadable sandbox loan record %s (%s); removing it", record, exc)
            record.unlink(missing_ok=True)
            continue
        try:
            loan.give_back()
        except OSError as exc:
            log.warning("could not give %s back to uid %d: %s", loan.path, loan.uid, exc)
            continue
        log.info("gave %s back to uid %d (its lender, pid %s, ended without doing so)", loan.path, loan.uid, data["pid"])
        returned.append(loan.path)
    return returned
