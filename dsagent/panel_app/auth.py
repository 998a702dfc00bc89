"""Who may use the dashboard: the basic-auth file, hashed passwords, the cookie secret.

The file is Panel's own ``--basic-auth`` format, a JSON object of user name to
password, so a file written for ``panel serve`` works here. A password may also
be a hash (``pbkdf2_sha256$<iterations>$<salt>$<hex>``), which is what
``dsagent serve --add-user NAME`` writes; plain ones are compared in constant
time. Pages and the websocket use Panel's login (``DsagentAuthProvider``); the
REST routes accept the same login cookie or an ``Authorization: Basic`` header
(for ``curl -u``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
from pathlib import Path

from dsagent.errors import DsagentError

__all__ = ["Credentials", "hash_password", "add_user", "cookie_secret", "make_auth_provider"]

_SCHEME = "pbkdf2_sha256"
_ITERATIONS = 200_000


def hash_password(password: str, *, salt: str | None = None, iterations: int = _ITERATIONS) -> str:
    salt = salt or secrets.token_hex(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt.encode("ascii"), iterations).hex()
    return f"{_SCHEME}${iterations}${salt}${digest}"


def _matches(stored: str, given: str) -> bool:
    if stored.startswith(_SCHEME + "$"):
        try:
            _, iterations, salt, _digest = stored.split("$", 3)
            expected = hash_password(given, salt=salt, iterations=int(iterations))
        except ValueError:
            return False
        return hmac.compare_digest(expected, stored)
    return hmac.compare_digest(stored.encode("utf-8"), given.encode("utf-8"))


class Credentials:
    """The users of a basic-auth file; ``check(user, password)``. Re-read when the file changes."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._mtime: float | None = None
        self._users: dict[str, str] = {}
        self._load()

    def _load(self) -> None:
        where = f"the basic-auth file {self.path}"
        hint = 'write a JSON object of user name to password, e.g. {"alice": "secret"}, or use `dsagent serve --add-user NAME --basic-auth FILE`'
        try:
            mtime = self.path.stat().st_mtime
            if mtime == self._mtime:
                return
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise DsagentError(f"{where} does not exist", hint="create it with `dsagent serve --add-user NAME --basic-auth FILE`") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise DsagentError(f"cannot read {where}: {exc}", hint="check its permissions") from None
        except json.JSONDecodeError as exc:
            raise DsagentError(f"{where} is not valid JSON: {exc}", hint=hint) from None
        if not isinstance(data, dict) or not data or not all(isinstance(k, str) and isinstance(v, str) and k and v for k, v in data.items()):
            raise DsagentError(f"{where} must be a non-empty JSON object of user name to password (strings)", hint=hint)
        self._users, self._mtime = data, mtime

    def check(self, user: str, password: str) -> bool:
        try:
            self._load()
        except DsagentError:
            pass  # a file broken while serving: keep the users read before
        stored = self._users.get(user)
        return stored is not None and _matches(stored, password)

    def check_header(self, header: str | None) -> str | None:
        """The user of a valid ``Authorization: Basic ...`` header, else None."""
        if not header or not header.lower().startswith("basic "):
            return None
        try:
            user, _, password = base64.b64decode(header[6:].strip()).decode("utf-8").partition(":")
        except (ValueError, UnicodeDecodeError):
            return None
        return user if self.check(user, password) else None


def add_user(path: str | Path, user: str, password: str) -> None:
    """Write (or replace) ``user`` with a hashed password into the basic-auth file (created 0600)."""
    path = Path(path)
    users: dict[str, str] = {}
    if path.exists():
        users = Credentials(path)._users
    users[user] = hash_password(password)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(users, handle, indent=2)
    os.replace(tmp, path)


def cookie_secret(given: str | None, home: Path) -> str:
    """The flag's secret, else DSAGENT_DASHBOARD_COOKIE_SECRET, else one generated once and kept in the workspace."""
    if given:
        return given
    from dsagent.settings import Settings

    configured = Settings().dashboard_cookie_secret
    if configured:
        return configured
    path = home / "dashboard-cookie-secret"
    if path.exists():
        return path.read_text(encoding="utf-8").strip()
    secret = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(secret)
    return secret


def make_auth_provider(credentials: Credentials):
    """Panel's basic-auth login, checking passwords against ``credentials`` (hashed or plain)."""
    from panel.auth import BasicAuthProvider, BasicLoginHandler

    class LoginHandler(BasicLoginHandler):
        def _validate(self, username: str, password: str) -> bool:
            return credentials.check(username, password)

    class Provider(BasicAuthProvider):
        @property
        def login_handler(self):
            LoginHandler._login_endpoint = self._login_endpoint
            LoginHandler._login_template = self._login_template
            return LoginHandler

    templates = Path(__file__).with_name("templates")
    # our own pages: Panel's load their logo and styles from a CDN, which a closed network cannot reach
    return Provider(login_template=str(templates / "login.html"), logout_template=str(templates / "logout.html"))
