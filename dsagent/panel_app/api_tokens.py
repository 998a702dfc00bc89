"""API tokens: how scripts use the REST routes of a server with a login, without a browser's cookie.

``dsagent serve --add-token NAME`` makes a token and prints it once; scripts send
it as ``Authorization: Bearer <token>``. Only a SHA-256 of each token is kept
(``<workspace>/dashboard-tokens.json``, mode 0600): the file alone lets nobody
in. Tokens are random (256 bits), so a fast hash is enough and a wrong token
costs the server nothing worth throttling. ``--revoke-token NAME`` removes one;
a running server reads the file again when it changes, so the token stops
working at its next request. A token acts as the user ``token:NAME`` on the
REST routes only; pages and the websocket need a login.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import secrets
import threading
import time
from pathlib import Path

from dsagent.errors import DsagentError

__all__ = ["ApiTokens", "TOKEN_FILE", "TOKEN_PREFIX"]

log = logging.getLogger(__name__)

TOKEN_FILE = "dashboard-tokens.json"
TOKEN_PREFIX = "dsat_"  # recognisable in a leaked config file or a secret scanner's report
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class ApiTokens:
    """The tokens of one workspace: ``add``, ``revoke``, ``listing`` and ``user`` (who a Bearer header is)."""

    def __init__(self, home: Path) -> None:
        self.path = Path(home) / TOKEN_FILE
        self._lock = threading.Lock()
        self._mtime: float | None = None
        self._by_hash: dict[str, str] = {}  # sha256 of the token -> name

    def add(self, name: str) -> str:
        """A new token named ``name``; returns it (the only time it is seen)."""
        if not _NAME.fullmatch(name):
            raise DsagentError(f"{name!r} is not a token name", hint="use letters, digits, '.', '_' or '-' (up to 64), e.g. ci-nightly")
        entries = self._entries()
        if name in entries:
            raise DsagentError(f"a token named {name!r} exists", hint=f"revoke it first (dsagent serve --revoke-token {name}) or pick another name")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        entries[name] = {"sha256": _hash(token), "created": time.time()}
        self._save(entries)
        return token

    def revoke(self, name: str) -> None:
        entries = self._entries()
        if entries.pop(name, None) is None:
            known = ", ".join(sorted(entries)) or "none"
            raise DsagentError(f"no token named {name!r} (tokens: {known})", hint="dsagent serve --list-tokens shows them")
        self._save(entries)

    def listing(self) -> list[tuple[str, float]]:
        """(name, created) of every token, oldest first."""
        return sorted(((name, float(entry.get("created", 0))) for name, entry in self._entries().items()), key=lambda item: item[1])

    def user(self, header: str | None) -> str | None:
        """``token:NAME`` for an ``Authorization: Bearer`` header holding a live token, else None."""
        if not header or not header[:7].lower() == "bearer ":
            return None
        self._refresh()
        name = self._by_hash.get(_hash(header[7:].strip()))
        return f"token:{name}" if name is not None else None

    def _refresh(self) -> None:
        """Read the file again when it changed (one stat otherwise): a revoked token stops at once."""
        try:
            mtime = self.path.stat().st_mtime_ns
        except FileNotFoundError:
            mtime = None
        if mtime == self._mtime:
            return
        with self._lock:
            try:
                self._by_hash = {entry["sha256"]: name for name, entry in self._entries().items()}
            except DsagentError as exc:  # a damaged file lets no token in (and says so once per change)
                log.warning("%s (%s): no API token is accepted until it is fixed", exc, exc.hint)
                self._by_hash = {}
            self._mtime = mtime

    def _entries(self) -> dict[str, dict]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise DsagentError(f"cannot read the API tokens in {self.path}: {exc}",
                               hint="fix or remove the file (removing it revokes every token), then add tokens again") from None
        if not isinstance(data, dict) or not all(isinstance(v, dict) and isinstance(v.get("sha256"), str) for v in data.values()):
            raise DsagentError(f"{self.path} is not a token file dsagent wrote", hint="remove it (this revokes every token) and add tokens again")
        return data

    def _save(self, entries: dict[str, dict]) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(entries, handle, indent=2)
        os.replace(tmp, self.path)


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()
