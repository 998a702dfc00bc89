"""Logins as server-side sessions: the page's token holds no credential, logout and a new password end them,
the login and logout forms need their form token, and wrong passwords are throttled per client.

A real ``dsagent serve --basic-auth`` on loopback, spoken to with httpx as a browser would (cookies kept).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from contextlib import contextmanager
from typing import Iterator

import httpx
import psutil
import pytest
from bokeh.util.token import get_token_payload
from tornado.web import decode_signed_value

from dsagent.artifacts import Store
from dsagent.panel_app import auth
from dsagent.settings import Settings
from dsagent.workspace import Workspace

from .conftest import serve_dashboard

pytestmark = pytest.mark.xdist_group("panel-sessions")

SECRET = "a-cookie-secret-kept-in-a-file-0123456789"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("sessions")
    home, users = root / "ws", root / "users.json"
    users.write_text(json.dumps({"plain": "plain-pass"}))
    _set_password(users, "alice", "wonderland")
    with Store.open(Workspace(home), Settings(home=str(home))) as store:
        run = store.create_run("exec", title="a private run")
        store.update_run_status(run.id, "succeeded")
    secret_file = root / "cookie-secret"
    secret_file.write_text(SECRET + "\n")
    secret_file.chmod(0o600)
    with serve_dashboard(home, "--basic-auth", str(users), "--cookie-secret-file", str(secret_file)) as dashboard:
        yield dashboard, users, run.id


def _set_password(users, user: str, password: str) -> None:
    done = subprocess.run([sys.executable, "-m", "dsagent", "serve", "--basic-auth", str(users), "--add-user", user],
                          env={**os.environ, "DSAGENT_NEW_PASSWORD": password}, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def _form_token(page: str) -> str:
    return re.search(r'name="form_token" value="([^"]+)"', page).group(1)


@contextmanager
def _login(url: str, user: str, password: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=url, timeout=30) as client:
        form = client.get("login")
        answer = client.post("login", data={"username": user, "password": password, "form_token": _form_token(form.text)})
        assert answer.status_code == 302, answer.text
        yield client


def test_the_page_token_carries_no_login_cookie(server):
    dashboard, _, run_id = server
    with _login(dashboard.url, "alice", "wonderland") as client:
        page = client.get("runs")
        assert page.status_code == 200
        token = re.search(r'"token":"([^"]+)"', page.text).group(1)
        payload = get_token_payload(token)
        assert "user" not in payload["cookies"] and "id_token" not in payload["cookies"], payload["cookies"]
        assert "Cookie" not in payload["headers"] and "Authorization" not in payload["headers"]
        assert auth.WHO_COOKIE in payload["cookies"]  # who is logged in, for the page; signed, not a credential
        # the cookie the browser keeps is a session id, not the user name
        session_id = decode_signed_value(SECRET, "user", client.cookies["user"].strip('"'))
        assert session_id and b"alice" not in session_id and len(session_id) >= 32
        assert client.get(f"api/runs/{run_id}").status_code == 200


def test_logout_is_a_post_that_ends_the_session_on_the_server(server):
    dashboard, _, run_id = server
    with _login(dashboard.url, "alice", "wonderland") as client:
        stolen = client.cookies["user"]
        page = client.get("logout")  # a link (or another site's <img>) only shows the button
        assert page.status_code == 200 and client.get(f"api/runs/{run_id}").status_code == 200
        refused = client.post("logout", data={"form_token": "forged"})
        assert refused.status_code == 403 and client.get(f"api/runs/{run_id}").status_code == 200
        ended = client.post("logout", data={"form_token": _form_token(refused.text)})  # the form it showed again
        assert ended.status_code == 200 and "logged out" in ended.text
    replayed = httpx.get(dashboard.url + f"api/runs/{run_id}", cookies={"user": stolen}, timeout=30)
    assert replayed.status_code == 401  # the copied cookie died with the session
    assert httpx.get(dashboard.url + "runs", cookies={"user": stolen}, timeout=30).status_code == 302


def test_login_needs_the_form_token(server):
    dashboard, _, _ = server
    with httpx.Client(base_url=dashboard.url, timeout=30) as client:
        no_token = client.post("login", data={"username": "alice", "password": "wonderland"})
        assert no_token.status_code == 403 and "user" not in client.cookies
        client.get("login")
        forged = client.post("login", data={"username": "alice", "password": "wonderland", "form_token": "guessed"})
        assert forged.status_code == 403 and "user" not in client.cookies


def test_a_new_password_ends_the_users_sessions(server):
    dashboard, users, run_id = server
    with _login(dashboard.url, "alice", "wonderland") as alice, _login(dashboard.url, "plain", "plain-pass") as other:
        _set_password(users, "alice", "looking-glass")
        assert alice.get(f"api/runs/{run_id}").status_code == 401
        assert other.get(f"api/runs/{run_id}").status_code == 200  # other users stay logged in
    with _login(dashboard.url, "alice", "looking-glass") as again:
        assert again.get(f"api/runs/{run_id}").status_code == 200


def test_wrong_passwords_are_throttled_per_client_with_retry_after(server):
    dashboard, _, run_id = server
    # another client address: the test's requests come from 127.0.0.1, this one from 127.0.0.2 (loopback routes both)
    transport = httpx.HTTPTransport(local_address="127.0.0.2")
    with httpx.Client(base_url=dashboard.url, timeout=30, transport=transport) as attacker:
        answers = []
        for _ in range(8):
            token = _form_token(attacker.get("login").text)
            answers.append(attacker.post("login", data={"username": "plain", "password": "nope", "form_token": token}))
        codes = [a.status_code for a in answers]
        assert codes[:5] == [401] * 5 and 429 in codes[5:], codes
        limited = next(a for a in answers if a.status_code == 429)
        assert int(limited.headers["Retry-After"]) >= 1 and "wait" in limited.text
    # the real user, from their own address, logs in at once
    with _login(dashboard.url, "plain", "plain-pass") as client:
        assert client.get(f"api/runs/{run_id}").status_code == 200


def test_every_password_check_costs_one_pbkdf2_known_or_not(tmp_path, monkeypatch):
    users = tmp_path / "users.json"
    users.write_text(json.dumps({"plain": "plain-pass"}))
    auth.add_user(users, "alice", "wonderland")
    credentials = auth.Credentials(users)
    calls = []
    real = auth.hashlib.pbkdf2_hmac
    monkeypatch.setattr(auth.hashlib, "pbkdf2_hmac", lambda *a, **k: calls.append(a[3]) or real(*a, **k))
    for user, password in (("alice", "wrong"), ("alice", "wonderland"), ("nobody", "x"), ("plain", "wrong"), ("plain", "plain-pass")):
        calls.clear()
        credentials.check(user, password)
        assert len(calls) == 1 and calls[0] == auth._ITERATIONS, (user, calls)


def test_the_throttle_spares_other_clients_and_forgets():
    throttle = auth.LoginThrottle(free=3, window_s=60)
    for _ in range(4):
        throttle.failed("10.0.0.9", "alice")
    assert throttle.wait_s("10.0.0.9", "alice") > 0
    assert throttle.wait_s("10.0.0.7", "alice") == 0  # the real user elsewhere is not locked out
    throttle.succeeded("10.0.0.9", "alice")
    assert throttle.wait_s("10.0.0.9", "alice") == 0


def test_the_cookie_secret_is_on_no_command_line(server):
    dashboard, _, _ = server
    server_process = psutil.Process(dashboard.process.pid)
    for process in [server_process, *server_process.children(recursive=True)]:
        assert SECRET not in " ".join(process.cmdline()), process.cmdline()
    assert not (dashboard.home / "dashboard-cookie-secret").exists()  # the file's secret was used, none generated


def _tokens_cli(home, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dsagent", "serve", "--workspace", str(home), *args],
                          capture_output=True, text=True, timeout=60)


def test_api_tokens_work_on_rest_only_are_hashed_and_revocable(server):
    dashboard, _, run_id = server
    made = _tokens_cli(dashboard.home, "--add-token", "ci-nightly")
    assert made.returncode == 0, made.stderr
    token = re.search(r"^(dsat_\S+)$", made.stdout, re.M).group(1)
    kept = (dashboard.home / "dashboard-tokens.json")
    assert token not in kept.read_text() and kept.stat().st_mode & 0o777 == 0o600  # only a hash, only for us
    bearer = {"Authorization": f"Bearer {token}"}
    status, body = dashboard.get_json(f"api/runs/{run_id}", bearer)
    assert status == 200 and body["title"] == "a private run"
    assert dashboard.get_json(f"api/runs/{run_id}", {"Authorization": f"Bearer {token}x"})[0] == 401
    assert dashboard.get("runs", bearer)[0] == 302  # pages need a login: a token is for scripts
    again = _tokens_cli(dashboard.home, "--add-token", "ci-nightly")
    assert again.returncode != 0 and "exists" in again.stderr and token not in again.stdout
    listing = _tokens_cli(dashboard.home, "--list-tokens")
    assert "ci-nightly" in listing.stdout and "dsat_" not in listing.stdout
    revoked = _tokens_cli(dashboard.home, "--revoke-token", "ci-nightly")
    assert revoked.returncode == 0, revoked.stderr
    assert dashboard.get_json(f"api/runs/{run_id}", bearer)[0] == 401  # the running server stops at once
    unknown = _tokens_cli(dashboard.home, "--revoke-token", "ci-nightly")
    assert unknown.returncode != 0 and "no token named 'ci-nightly'" in unknown.stderr
