"""The login and logout pages: CSRF-checked forms, password checks off the event loop, server-side sessions.

- ``GET /login`` sets a random form token in a cookie (SameSite=Strict) and in
  the form; ``POST /login`` needs both to match, so another site cannot log a
  browser in as someone else (login CSRF).
- A client that failed too often is answered 429 with ``Retry-After`` before
  any password is checked (``auth.LoginThrottle``).
- ``GET /logout`` shows a button; ``POST /logout`` ends the session on the
  server and clears the cookies. The session cookie is SameSite=Lax, so a
  cross-site POST carries no session to end; a cross-site GET changes nothing.
"""

from __future__ import annotations

import asyncio
import hmac
import secrets
from concurrent.futures import Executor
from typing import TYPE_CHECKING

from tornado.web import RequestHandler

from dsagent.panel_app.auth import LOGIN_FORM_COOKIE, WHO_COOKIE

if TYPE_CHECKING:
    from dsagent.panel_app.auth import Credentials

__all__ = ["make_handlers"]


def make_handlers(credentials: "Credentials", checks: Executor, *, session_days: float) -> tuple[type, type]:
    """The two handler classes for one server's users (Panel's provider wants classes, not instances): subclasses that
    carry this server's credentials, password-check pool and session length."""
    config = {"credentials": credentials, "checks": checks, "session_days": session_days}
    return type("LoginHandler", (LoginHandler,), dict(config)), type("LogoutHandler", (LogoutHandler,), dict(config))


class _FormPage(RequestHandler):
    """A page with a form protected by a double-submit token (cookie + hidden field)."""

    def check_xsrf_cookie(self) -> None:
        pass  # the form token below does this job for these two forms

    def new_form_token(self) -> str:
        token = secrets.token_urlsafe(24)
        self.set_cookie(LOGIN_FORM_COOKIE, token, httponly=True, samesite="Strict", secure=self.request.protocol == "https")
        return token

    def form_token_ok(self) -> bool:
        sent, kept = self.get_argument("form_token", ""), self.get_cookie(LOGIN_FORM_COOKIE, "")
        return bool(sent) and hmac.compare_digest(sent.encode(), kept.encode())


class _ServerForm(_FormPage):
    """What both pages need from their server (set on the subclasses ``make_handlers`` builds)."""

    credentials: "Credentials"
    checks: Executor
    session_days: float
    _login_endpoint = "/login"


class LoginHandler(_ServerForm):
    """``GET /login`` shows the form; ``POST /login`` checks the form token, the throttle, then the password."""

    _login_template = None

    def get(self) -> None:
        self._show(self.get_argument("error", ""))

    async def post(self) -> None:
        user, password = self.get_argument("username", ""), self.get_argument("password", "")
        if not self.form_token_ok():
            self._show("The login form had expired (or came from another site): log in again.", status=403)
            return
        client = self.request.remote_ip or "?"
        if self._throttled(client, user):
            return
        ok = await asyncio.get_running_loop().run_in_executor(self.checks, self.credentials.check, user, password)
        if not ok:
            self.credentials.throttle.failed(client, user)
            self._show("Invalid user name or password.", status=401)
            return
        self.credentials.throttle.succeeded(client, user)
        self._log_in(user)
        self.redirect(self._next_url())

    def _throttled(self, client: str, user: str) -> bool:
        """Answer 429 (before any password is checked) when this client failed too often."""
        wait = self.credentials.throttle.wait_s(client, user)
        if wait <= 0:
            return False
        self.set_header("Retry-After", str(int(wait) + 1))
        self._show(f"Too many failed logins from this address: wait {int(wait) + 1} s, then try again.", status=429)
        return True

    def _log_in(self, user: str) -> None:
        session_id = self.credentials.sessions.start(user) if self.credentials.sessions is not None else ""
        secure = self.request.protocol == "https"
        for name, value in (("user", session_id), (WHO_COOKIE, user)):
            self.set_secure_cookie(name, value, expires_days=self.session_days, httponly=True, samesite="Lax", secure=secure)
        self.clear_cookie(LOGIN_FORM_COOKIE)

    def _next_url(self) -> str:
        from panel.auth import _validate_next_url

        return _validate_next_url(self.get_cookie("next_url", "./")) or "./"

    def _show(self, error: str, status: int = 200) -> None:
        from panel.auth import _validate_next_url

        next_url = _validate_next_url(self.get_argument("next", ""))
        if next_url:
            self.set_cookie("next_url", next_url, httponly=True, samesite="Lax")
        self.set_status(status)
        self.write(self._login_template.render(login_endpoint=self._login_endpoint, errormessage=error,
                                               form_token=self.new_form_token()))


class LogoutHandler(_ServerForm):
    """``GET /logout`` shows a button; ``POST /logout`` (this server's own form only) ends the session and clears the cookies."""

    _logout_template = None

    def get(self) -> None:
        self.write(self._logout_template.render(LOGIN_ENDPOINT=self._login_endpoint, logged_out=False,
                                                form_token=self.new_form_token()))

    def post(self) -> None:
        if not self.form_token_ok():  # not this server's own form: ask again rather than act
            self.set_status(403)
            self.get()
            return
        raw = self.get_secure_cookie("user", max_age_days=self.session_days)
        if raw and self.credentials.sessions is not None:
            self.credentials.sessions.end(raw.decode("utf-8", "replace"))
        for name in ("user", WHO_COOKIE, "id_token", LOGIN_FORM_COOKIE, "next_url"):
            self.clear_cookie(name)
        self.write(self._logout_template.render(LOGIN_ENDPOINT=self._login_endpoint, logged_out=True, form_token=""))
