"""With ``--basic-auth``: anonymous requests to pages, the websocket and the REST routes are refused; a login opens all."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys

import pytest
from websockets.exceptions import InvalidStatus

from dsagent.artifacts import NewArtifact, Store
from dsagent.settings import Settings
from dsagent.workspace import Workspace

from .conftest import serve_dashboard

# one dashboard server per module: every test of it on one xdist worker, so it starts once
pytestmark = pytest.mark.xdist_group("panel-auth")


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    root = tmp_path_factory.mktemp("auth")
    home = root / "ws"
    users = root / "users.json"
    users.write_text(json.dumps({"plain": "plain-pass"}))
    # the hashed entry is written by the CLI helper, as a user would
    added = subprocess.run([sys.executable, "-m", "dsagent", "serve", "--basic-auth", str(users), "--add-user", "alice"],
                           env={**os.environ, "DSAGENT_NEW_PASSWORD": "wonderland"}, capture_output=True, text=True, timeout=60)
    assert added.returncode == 0, added.stderr
    stored = json.loads(users.read_text())
    assert stored["alice"].startswith("pbkdf2_sha256$") and "wonderland" not in stored["alice"]
    with Store.open(Workspace(home), Settings(home=str(home))) as store:
        run = store.create_run("exec", title="private run")
        artifact = store.add_artifacts(run.id, [NewArtifact("secret.txt", "text", "text/plain", b"top secret")])[0]
        store.update_run_status(run.id, "succeeded")
    with serve_dashboard(home, "--basic-auth", str(users)) as dashboard:
        yield dashboard, artifact


def _open_and_close(url: str, **kwargs) -> None:
    import websockets.sync.client

    with websockets.sync.client.connect(url, **kwargs):
        pass


def _basic(user: str, password: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_anonymous_requests_are_refused(guarded):
    dashboard, artifact = guarded
    status, headers, _ = dashboard.get("/")
    assert status == 302 and "login" in headers["Location"]
    status, headers, _ = dashboard.get("runs")
    assert status == 302 and "login" in headers["Location"]
    status, _, body = dashboard.get(f"api/artifacts/{artifact.id}")
    assert status == 401 and b"top secret" not in body
    assert dashboard.get("api/runs")[0] == 401
    assert dashboard.get(f"api/artifacts/{artifact.id}", _basic("alice", "wrong"))[0] == 401
    ws_url = dashboard.url.replace("http://", "ws://") + "ws"
    with pytest.raises(InvalidStatus) as refused:  # without auth this handshake succeeds (101)
        _open_and_close(ws_url, origin=dashboard.url.rstrip("/"), open_timeout=20)
    assert refused.value.response.status_code in (302, 401, 403)


def test_basic_auth_header_works_for_scripts(guarded):
    dashboard, artifact = guarded
    for user, password in (("alice", "wonderland"), ("plain", "plain-pass")):
        status, _, body = dashboard.get(f"api/artifacts/{artifact.id}", _basic(user, password))
        assert status == 200 and body == b"top secret"


def test_after_logging_in_pages_and_routes_work(guarded, new_page):
    dashboard, artifact = guarded
    page, problems = new_page(dashboard.url)
    page.goto("/runs")
    page.fill("input[name=username]", "alice")
    page.fill("input[name=password]", "wonderland")
    page.click("button[type=submit], input[type=submit]")
    page.get_by_text("private run").first.wait_for()
    page.get_by_text("alice").first.wait_for()  # who is logged in, in the navigation bar
    response = page.request.get(f"api/artifacts/{artifact.id}")
    assert response.status == 200 and response.body() == b"top secret"
    # the websocket handshake with the login cookie gets past the login check that refuses anonymous ones
    cookie = "; ".join(f"{c['name']}={c['value']}" for c in page.context.cookies())
    _open_and_close(dashboard.url.replace("http://", "ws://") + "ws", origin=dashboard.url.rstrip("/"),
                    additional_headers={"Cookie": cookie}, open_timeout=20)
    assert [p for p in problems.items if "/login" not in p] == []
