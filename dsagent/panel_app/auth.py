"""Who may use the dashboard: the basic-auth file, hashed passwords, the cookie secret.

The file is Panel's own ``--basic-auth`` format, a JSON object of user name to
password, so a file written for ``panel serve`` works here. A password may also
be a hash (``pbkdf2_sha256$<iterations>$<salt>$<hex>``), which is what
``dsagent serve --add-user NAME`` writes; plain ones are compared in constant
time. Pages and the websocket use Panel's login with our handlers; the REST
routes accept the same login cookie, an ``Authorization: Basic`` header (for
``curl -u``) or an API token (``api_tokens.py``).

A login starts a server-side session (``sessions.py``): the ``user`` cookie
holds its signed id (HttpOnly, SameSite=Lax), never the user name. Bokeh copies
a page request's cookies into the session token it embeds in the page, where
page script can read it; the server leaves the login cookies out of it
(``TOKEN_EXCLUDED_COOKIES``), and pages learn who is logged in from a separate
signed ``dsagent_who`` cookie that lets nobody in. Password checks run on a
thread (PBKDF2 takes ~0.1 s), cost the same for unknown users, and repeated
failures from one client wait (``LoginThrottle``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from dsagent.errors import DsagentError

if TYPE_CHECKING:
    from dsagent.panel_app.api_tokens import ApiTokens
    from dsagent.panel_app.sessions import LoginSessions

__all__ = ["Credentials", "LoginThrottle", "hash_password", "add_user", "cookie_secret", "make_auth_provider",
           "TOKEN_EXCLUDED_COOKIES", "TOKEN_EXCLUDED_HEADERS", "WHO_COOKIE",
           "PASSWORD_CHECKS", "basic_user", "session_user"]

WHO_COOKIE = "dsagent_who"  # signed user name for the pages' "logged in as"; not a credential
LOGIN_FORM_COOKIE = "dsagent_login_form"  # the login form's CSRF token (double submit)
#: cookies and headers Bokeh must not copy into the session token it embeds in every page (script can read it)
TOKEN_EXCLUDED_COOKIES = ["user", "id_token", "access_token", "refresh_token", LOGIN_FORM_COOKIE]
TOKEN_EXCLUDED_HEADERS = ["Cookie", "Authorization"]

_SCHEME = "pbkdf2_sha256"
_ITERATIONS = 200_000


def hash_password(password: str, *, salt: str | None = None, iterations: int = _ITERATIONS) -> str:
    salt = salt or secrets.token_hex(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt.encode("ascii"), iterations).hex()
    return f"{_SCHEME}${iterations}${salt}${digest}"


#: checked when the user is unknown or has a plain password, so every check costs one PBKDF2 (names are not told apart by time)
_DUMMY = hash_password(secrets.token_hex(8), salt="0" * 32)


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
        self.sessions: LoginSessions | None = None  # set by the server: a changed password ends the user's sessions
        self.tokens: ApiTokens | None = None  # set by the server: scripts' Bearer tokens for the REST routes
        self.throttle = LoginThrottle()
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
        changed = [u for u, stored in self._users.items() if data.get(u) != stored]
        self._users, self._mtime = data, mtime
        if self.sessions is not None:
            for user in changed:  # a new password (or a removed user) logs that user out everywhere
                self.sessions.end_user(user)

    def refresh(self) -> None:
        """Read the file again if it changed (a stat when it did not): new passwords end their users' sessions."""
        try:
            self._load()
        except DsagentError:
            pass  # a file broken while serving: keep the users read before

    def check(self, user: str, password: str) -> bool:
        """Whether the password is right; one PBKDF2 whatever the answer (blocking: call it off the event loop)."""
        self.refresh()
        stored = self._users.get(user)
        if stored is None or not stored.startswith(_SCHEME + "$"):
            _matches(_DUMMY, password)
        return stored is not None and _matches(stored, password)

    def check_header(self, header: str | None) -> str | None:
        """The user of a valid ``Authorization: Basic ...`` header, else None (blocking, like ``check``)."""
        user, password = _basic_parts(header)
        return user if user is not None and self.check(user, password) else None


def _basic_parts(header: str | None) -> tuple[str | None, str]:
    if not header or not header.lower().startswith("basic "):
        return None, ""
    try:
        user, _, password = base64.b64decode(header[6:].strip()).decode("utf-8").partition(":")
    except (ValueError, UnicodeDecodeError):
        return None, ""
    return user, password


def basic_user(header: str | None) -> str:
    """The user name an ``Authorization: Basic`` header claims (unchecked; for throttling)."""
    return _basic_parts(header)[0] or ""


class LoginThrottle:
    """Failed logins make the next try from the same client wait, doubling per failure past a few.

    Counted per client address and per (client, user name): an attacker's failures slow the attacker's
    address, never the real user logging in from elsewhere. A success clears that client's count for
    that user; counts are forgotten after ``window_s`` without a failure."""

    def __init__(self, free: int = 5, max_wait_s: float = 300.0, window_s: float = 900.0) -> None:
        self.free, self.max_wait_s, self.window_s = free, max_wait_s, window_s
        self._lock = threading.Lock()
        self._failures: dict[tuple[str, ...], tuple[int, float]] = {}  # key -> (count, time of the last failure)

    def wait_s(self, client: str, user: str) -> float:
        """Seconds the client must still wait before trying again (0: go ahead)."""
        now = time.monotonic()
        with self._lock:
            return max(self._wait(key, now) for key in ((client,), (client, user)))

    def _wait(self, key: tuple[str, ...], now: float) -> float:
        count, last = self._failures.get(key, (0, 0.0))
        if now - last > self.window_s:
            self._failures.pop(key, None)
            return 0.0
        limit = self.free * (4 if len(key) == 1 else 1)  # an address may mistype a few users' passwords
        if count < limit:
            return 0.0
        return max(0.0, last + min(self.max_wait_s, 2.0 ** (count - limit)) - now)

    def failed(self, client: str, user: str) -> None:
        now = time.monotonic()
        with self._lock:
            for key in ((client,), (client, user)):
                count, _ = self._failures.get(key, (0, 0.0))
                self._failures[key] = (count + 1, now)

    def succeeded(self, client: str, user: str) -> None:
        with self._lock:
            self._failures.pop((client, user), None)


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


#: password checks (PBKDF2, ~0.1 s of CPU each) run here: never on the event loop, and a flood of wrong passwords
#: queues behind two threads instead of taking every core from the pages
PASSWORD_CHECKS = ThreadPoolExecutor(2, thread_name_prefix="dashboard-login")


def make_auth_provider(credentials: Credentials, *, session_days: float):
    """Panel's basic-auth provider with our login and logout handlers, users and server-side sessions."""
    from panel.auth import BasicAuthProvider

    from dsagent.panel_app.login_handlers import make_handlers

    login, logout = make_handlers(credentials, PASSWORD_CHECKS, session_days=session_days)

    class Provider(BasicAuthProvider):
        @property
        def get_user(self) -> Callable:
            def user_of(handler) -> str | None:
                return session_user(credentials, handler, session_days)
            return user_of

        @property
        def login_handler(self):
            login._login_endpoint, login._login_template = self._login_endpoint, self._login_template
            return login

        @property
        def logout_handler(self):
            logout._login_endpoint, logout._logout_template = self._login_endpoint, self._logout_template
            return logout

    templates = Path(__file__).with_name("templates")
    # our own pages: Panel's load their logo and styles from a CDN, which a closed network cannot reach
    provider = Provider(login_template=str(templates / "login.html"), logout_template=str(templates / "logout.html"))
    # both include their look (templates/auth_look.html): Panel's own template environment (the same escaping), with our
    # folder to find it in
    from jinja2 import FileSystemLoader
    from panel.io.resources import _env

    look = _env.overlay(loader=FileSystemLoader(str(templates)))
    provider._login_template, provider._logout_template = look.get_template("login.html"), look.get_template("logout.html")
    return provider


def session_user(credentials: Credentials, handler, session_days: float) -> str | None:
    """The user whose live session the request's login cookie names, else None."""
    raw = handler.get_secure_cookie("user", max_age_days=session_days)
    if not raw or credentials.sessions is None:
        return None
    credentials.refresh()
    return credentials.sessions.user(raw.decode("utf-8", "replace"))
