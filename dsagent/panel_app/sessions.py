"""Login sessions of the dashboard, kept on the server so that logging out (or a new password) ends them.

The login cookie holds a random session id, signed with the cookie secret; the
server maps it to a user here. A session ends at logout, when the user's
password changes, after ``dashboard_session_days`` or after
``dashboard_session_idle_hours`` without a request. Only a hash of each id is
stored (in ``<workspace>/dashboard-sessions.json``, mode 0600), so the file
alone lets nobody in; keeping it means a restart of ``dsagent serve`` does not
log everyone out.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = ["LoginSessions"]

#: a request refreshes "last seen" at most this often, so busy pages do not rewrite the file on every poll
_TOUCH_EVERY_S = 60.0


@dataclass
class _Session:
    user: str
    created: float
    seen: float


class LoginSessions:
    def __init__(self, path: Path | None, *, lifetime_s: float, idle_s: float) -> None:
        self.path, self.lifetime_s, self.idle_s = path, lifetime_s, idle_s
        self._lock = threading.Lock()
        self._by_hash: dict[str, _Session] = self._read()

    def start(self, user: str) -> str:
        """A new session for ``user``; returns its id (what the cookie carries)."""
        session_id = secrets.token_urlsafe(32)
        now = time.time()
        with self._lock:
            self._by_hash[_hash(session_id)] = _Session(user, now, now)
            self._write()
        return session_id

    def user(self, session_id: str | None) -> str | None:
        """The user of a live session, else None (an ended or expired session is forgotten)."""
        if not session_id:
            return None
        key, now = _hash(session_id), time.time()
        with self._lock:
            session = self._by_hash.get(key)
            if session is None:
                return None
            if now - session.created > self.lifetime_s or now - session.seen > self.idle_s:
                del self._by_hash[key]
                self._write()
                return None
            if now - session.seen > _TOUCH_EVERY_S:
                session.seen = now
                self._write()
            return session.user

    def end(self, session_id: str | None) -> None:
        if not session_id:
            return
        with self._lock:
            if self._by_hash.pop(_hash(session_id), None) is not None:
                self._write()

    def end_user(self, user: str) -> int:
        """End every session of ``user`` (a changed password or a removed user); how many there were."""
        with self._lock:
            ended = [k for k, s in self._by_hash.items() if s.user == user]
            for key in ended:
                del self._by_hash[key]
            if ended:
                self._write()
        return len(ended)

    def _read(self) -> dict[str, _Session]:
        if self.path is None:
            return {}
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            return {k: _Session(**v) for k, v in data.items()}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, TypeError):  # a damaged file: everyone logs in again, nothing else breaks
            return {}

    def _write(self) -> None:
        if self.path is None:
            return
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump({k: asdict(s) for k, s in self._by_hash.items()}, handle)
        os.replace(tmp, self.path)


def _hash(session_id: str) -> str:
    return hashlib.sha256(session_id.encode("utf-8")).hexdigest()
