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
    """The two handler classes for one server's users (Panel's provider wants classes, not instances)."""

    class LoginHandler(_FormPage):
        _login_endpoint = "/login"
        _login_template = None

        def get(self) -> None:
            self._show(self.get_argument("error", ""))

        async def post(self) -> None:
            user, password = self.get_argument("username", ""), self.get_argument("password", "")
            if not self.form_token_ok():
                self._show("The login form had expired (or came from another site): log in again.", status=403)
                return
            client = self.request.remote_ip or "?"
            wait = credentials.throttle.wait_s(client, user)
            if wait > 0:
                self.set_header("Retry-After", str(int(wait) + 1))
                self._show(f"Too many failed logins from this address: wait {int(wait) + 1} s, then try again.", status=429)
                return
            ok = await asyncio.get_running_loop().run_in_executor(checks, credentials.check, user, password)
            if not ok:
                credentials.throttle.failed(client, user)
                self._show("Invalid user name or password.", status=401)
                return
            credentials.throttle.succeeded(client, user)
            self._log_in(user)
            self.redirect(self._next_url())

        def _log_in(self, user: str) -> None:
            session_id = credentials.sessions.start(user) if credentials.sessions is not None else ""
            secure = self.request.protocol == "https"
            for name, value in (("user", session_id), (WHO_COOKIE, user)):
                self.set_secure_cookie(name, value, expires_days=session_days, httponly=True, samesite="Lax", secure=secure)
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

    class LogoutHandler(_FormPage):
        _login_endpoint = "/login"
        _logout_template = None

        def get(self) -> None:
            self.write(self._logout_template.render(LOGIN_ENDPOINT=self._login_endpoint, logged_out=False,
                                                    form_token=self.new_form_token()))

        def post(self) -> None:
            if not self.form_token_ok():  # not this server's own form: ask again rather than act
                self.set_status(403)
                self.get()
                return
            raw = self.get_secure_cookie("user", max_age_days=session_days)
            if raw and credentials.sessions is not None:
                credentials.sessions.end(raw.decode("utf-8", "replace"))
            for name in ("user", WHO_COOKIE, "id_token", LOGIN_FORM_COOKIE, "next_url"):
                self.clear_cookie(name)
            self.write(self._logout_template.render(LOGIN_ENDPOINT=self._login_endpoint, logged_out=True, form_token=""))

    return LoginHandler, LogoutHandler


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
