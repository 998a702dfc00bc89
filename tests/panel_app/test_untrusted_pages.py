"""XSS payloads in every place a page shows text from data, runs, records, chats or the model: none runs.

The workspace is filled with the payloads as the run machinery stores them (a
run's title, parameters, error and events; recorded scalars; a table
artifact's column, index and cell values; artifact, notebook, chat and
schedule names; a chat turn's question, cell output, answer and streamed
tokens). A real Chromium logs in and opens every page; on each, the payload
must show as text, no dialog may open, the title must not change, and the
browser must ask no other origin for anything. A last test shows the second
wall: with escaping out of the way, the pages' Content-Security-Policy still
stops an event attribute.
"""

from __future__ import annotations

import html
import http.server
import io
import json
import re
import threading
from pathlib import Path
from urllib.parse import quote

import pytest

from dsagent.artifacts import NewArtifact, Store
from dsagent.artifacts.chats import ChatTable
from dsagent.artifacts.schedules import Schedule
from dsagent.settings import Settings
from dsagent.workspace import Workspace

from .conftest import free_port, serve_dashboard
from .pagecheck import Look, look_at, screenshot_folder

pytestmark = pytest.mark.xdist_group("panel-untrusted")

FOREIGN_PORT = free_port()  # "another origin": a server of the test's own that counts what reaches it

PAYLOADS = [
    "<script>alert('script')</script>",
    "<img src=x onerror=alert('img')>",
    "<svg onload=alert('svg')>",
    "[click me](javascript:alert('js-link'))",
    '"><script>alert("attribute")</script>',
    "</textarea><script>alert('textarea')</script>",
    "![pic](x\" onerror=\"alert('md-image'))",
    "&lt;img src=x onerror=alert('entity')&gt;",
    f"![far](http://127.0.0.1:{FOREIGN_PORT}/markdown.png)",  # Markdown that asks another origin
    f"<img src=http://127.0.0.1:{FOREIGN_PORT}/html.png>",
]
ALL = " ".join(PAYLOADS)
#: a payload that is also a valid file name (no slash) and fits a chat's 200 characters
FILE_NAME = "<img src=x onerror=alert('file')>"
PASSWORD = "untrusted-pass"


def _table_bytes() -> bytes:
    import pandas as pd

    frame = pd.DataFrame({p: [p, PAYLOADS[(i + 1) % len(PAYLOADS)]] for i, p in enumerate(PAYLOADS[:6])},
                         index=pd.Index(PAYLOADS[6:8], name=PAYLOADS[1]))
    out = io.BytesIO()
    frame.to_parquet(out)
    return out.getvalue()


def _notebook() -> str:
    cells = [
        {"cell_type": "code", "execution_count": None, "id": "p", "metadata": {"tags": ["parameters"]}, "outputs": [],
         "source": f"region = {PAYLOADS[0]!r}\nnote = {PAYLOADS[1]!r}\n"},
        {"cell_type": "markdown", "id": "m", "metadata": {}, "source": ALL},
    ]
    return json.dumps({"cells": cells, "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
                       "nbformat": 4, "nbformat_minor": 5})


def _seed(home: Path) -> dict[str, int]:
    settings = Settings(home=str(home))
    ids: dict[str, int] = {}
    with Store.open(Workspace(home), settings) as store:
        run = store.create_run("notebook", title=PAYLOADS[0], params={"region": ALL, PAYLOADS[1]: PAYLOADS[2]}, backend="local")
        store.append_events(run.id, [
            ("cell_finished", {"cell": 0, "status": "error", "duration": 0.1, "error": ALL}),
            ("record", {"cell": 1, "name": PAYLOADS[1], "value": PAYLOADS[0]}),
        ])
        table, text, _image = store.add_artifacts(run.id, [
            NewArtifact(f"{FILE_NAME}.parquet", "table", "application/vnd.apache.parquet", _table_bytes(), cell=1),
            NewArtifact(FILE_NAME, "text", "text/plain", ALL.encode(), cell=1),
            NewArtifact(f"{FILE_NAME}.svg", "image", "image/svg+xml", b"<svg xmlns='http://www.w3.org/2000/svg' onload='alert(1)'/>", cell=1),
        ])
        store.update_run_status(run.id, "failed", error=ALL)
        ids.update(run=run.id, table=table.id, text=text.id)

        batch = store.create_run("batch", title=PAYLOADS[2], params={"grid": {"k": PAYLOADS[:2]}})
        children = store.create_children(batch.id, [{"k": PAYLOADS[0]}, {"k": PAYLOADS[3]}])
        for number, child in enumerate(children):
            store.append_events(child.id, [("record", {"cell": 0, "name": name, "value": PAYLOADS[number]}) for name in PAYLOADS[:5]])
            store.update_run_status(child.id, "running")
            store.update_run_status(child.id, "succeeded" if number else "failed", error=None if number else ALL)
        store.update_run_status(batch.id, "failed", error=ALL)
        ids.update(batch=batch.id, child_a=children[0].id, child_b=children[1].id)

        chat = ChatTable(store).create(FILE_NAME, graph="analysis", backend="local", datasets=[])
        done = store.create_run("agent", title=PAYLOADS[4], params={"task": ALL}, parent_id=chat.id)
        store.append_events(done.id, [
            ("agent_plan", {"plan": ALL}),
            ("cell_started", {"cell": 1, "code": ALL}),
            ("agent_cell", {"cell": 1, "status": "ok", "role": "code", "code": ALL,
                            "outputs": [{"output_type": "stream", "name": "stdout", "text": ALL},
                                        {"output_type": "error", "ename": PAYLOADS[1], "evalue": ALL, "traceback": []}]}),
            ("agent_review", {"verdict": PAYLOADS[1], "findings": [{"severity": PAYLOADS[2], "reason": ALL, "fix": PAYLOADS[3]}]}),
            ("agent_answer", {"answer": ALL}),
        ])
        store.update_run_status(done.id, "succeeded")
        streaming = store.create_run("agent", title=PAYLOADS[5], params={"task": PAYLOADS[5]}, parent_id=chat.id)
        store.append_events(streaming.id, [("agent_tokens", {"role": PAYLOADS[1], "text": ALL})])
        ids.update(chat=chat.id)

        store.add_schedule(Schedule(name=FILE_NAME, cron="0 6 * * *", timezone="UTC", paused=True,
                                    target={"kind": "notebook", "notebook": f"{FILE_NAME}.ipynb", "params": {"region": ALL}}))
        # a run of the notebook below (its page lists it) that is the schedule's last firing (the list shows it)
        fired = store.create_run("notebook", title=f"{FILE_NAME}.ipynb", params={"region": ALL, PAYLOADS[2]: PAYLOADS[4]},
                                 schedule_id=FILE_NAME)
        store.update_run_status(fired.id, "failed", error=ALL)
        store.set_schedule_last_run(FILE_NAME, fired.id)
    notebooks = Workspace(home).notebooks_dir
    notebooks.mkdir(parents=True, exist_ok=True)
    (notebooks / f"{FILE_NAME}.ipynb").write_text(_notebook())
    return ids


class _Counting(http.server.BaseHTTPRequestHandler):
    hits: list[str] = []

    def do_GET(self) -> None:
        _Counting.hits.append(self.path)
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def foreign():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", FOREIGN_PORT), _Counting)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield _Counting.hits
    server.shutdown()


@pytest.fixture(scope="module")
def hostile(tmp_path_factory, foreign):
    root = tmp_path_factory.mktemp("untrusted")
    home, users = root / "ws", root / "users.json"
    users.write_text(json.dumps({"analyst": PASSWORD}))
    ids = _seed(home)
    with serve_dashboard(home, "--basic-auth", str(users)) as dashboard:
        yield dashboard, ids


class Watch:
    """What a page did that script from a payload would do: dialogs, requests that reached another origin."""

    def __init__(self, page, foreign: list[str]) -> None:
        self.foreign = foreign
        self.dialogs: list[str] = []
        page.on("dialog", self._dialog)

    def _dialog(self, dialog) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    @property
    def seen(self) -> list[str]:
        return [f"dialog: {d}" for d in self.dialogs] + [f"request to another origin: {p}" for p in self.foreign]


def _login(page, dashboard) -> None:
    page.goto("/runs")
    page.fill("input[name=username]", "analyst")
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit], input[type=submit]")
    page.get_by_text("Runs").first.wait_for()


def test_the_login_page_shows_its_error_parameter_as_text(hostile, foreign, new_page):
    dashboard, _ = hostile
    for payload in PAYLOADS:
        status, _, body = dashboard.get(f"login?error={quote(payload)}")
        assert status == 200, payload
        if "<" in payload:  # markup arrives escaped (Markdown is not rendered on this page: it is text either way)
            shown = body.decode().replace("&#39;", "'").replace("&#34;", '"').replace("&quot;", '"')
            assert payload not in shown and html.escape(payload, quote=False) in shown, payload
    page, _ = new_page(dashboard.url)
    watch = Watch(page, foreign)
    page.goto(f"/login?error={quote(PAYLOADS[1])}")
    page.get_by_text(PAYLOADS[1]).wait_for()  # shown, as the characters it is made of
    assert page.title() == "dsagent · log in"
    assert watch.seen == []


@pytest.mark.parametrize("look", [Look("login", "/login?error=Invalid%20user%20name%20or%20password.", "button[type=submit]"),
                                  Look("logout", "/logout", "text=Log out of the")], ids=lambda look: look.name)
def test_the_login_and_logout_pages_look_right_on_a_phone_and_a_laptop_in_light_and_dark(hostile, browser, tmp_path_factory, look):
    """The two pages outside the dashboard's frame in its look: the OS's mode, nothing sideways at 390 px, no errors."""
    dashboard, _ = hostile
    folder = screenshot_folder(tmp_path_factory)
    assert look_at(browser, dashboard.url, look, folder) == []
    print(f"{look.name}: screenshots in {folder}")


def _pages(ids: dict[str, int]) -> list[tuple[str, str, str]]:
    """(name, path, a payload the page shows once its content is in)"""
    return [
        ("overview", "/", PAYLOADS[0]),
        ("runs", "/runs", PAYLOADS[0]),
        ("run", f"/run?id={ids['run']}", PAYLOADS[0]),
        ("batch", f"/run?id={ids['batch']}", PAYLOADS[4]),
        ("child", f"/run?id={ids['child_a']}", ALL),
        ("compare", f"/compare?ids={ids['child_a']},{ids['child_b']}", PAYLOADS[3]),
        ("artifacts", "/artifacts", FILE_NAME),
        ("artifact-table", f"/artifact?id={ids['table']}", PAYLOADS[5]),
        ("artifact-text", f"/artifact?id={ids['text']}", ALL),
        ("notebooks", "/notebooks", f"{FILE_NAME}.ipynb"),
        ("notebook", f"/notebook?path={quote(FILE_NAME + '.ipynb')}", f"{FILE_NAME}.ipynb"),
        ("schedules", "/schedules", FILE_NAME),
        ("chat", f"/chat?id={ids['chat']}", PAYLOADS[5]),
    ]


def test_no_payload_runs_on_any_page(hostile, foreign, new_page, tmp_path):
    dashboard, ids = hostile
    page, _ = new_page(dashboard.url)
    watch = Watch(page, foreign)
    _login(page, dashboard)
    for name, path, shown in _pages(ids):
        page.goto(path)
        title = page.title()
        try:
            page.get_by_text(shown, exact=False).first.wait_for()
        except Exception:
            page.screenshot(path=str(tmp_path / f"{name}-missing.png"), full_page=True)
            raise AssertionError(f"{name} ({path}) never showed {shown!r} as text; screenshot in {tmp_path}") from None
        page.wait_for_timeout(300)  # parts that fill in after the first (a table's rows, a notebook's render)
        page.screenshot(path=str(tmp_path / f"{name}.png"), full_page=True)
        assert page.title() == title, f"{name}: the title changed to {page.title()!r}"
        # no element anywhere (shadow roots included) carries a handler or a script URL that came from a payload
        hooked = page.locator("[onerror], [onload], a[href^='javascript' i]").count()
        assert hooked == 0, f"{name}: {hooked} element(s) with an event attribute or a javascript: link"
        assert watch.seen == [], f"{name}: {watch.seen}"
    print(f"screenshots in {tmp_path}")


def test_the_table_preview_shows_hostile_column_and_index_names_as_text(hostile, foreign, new_page):
    dashboard, ids = hostile
    page, _ = new_page(dashboard.url)
    watch = Watch(page, foreign)
    _login(page, dashboard)
    page.goto(f"/artifact?id={ids['table']}")
    titles = page.locator(".tabulator-col-title")
    titles.filter(has_text="alert('script')").first.wait_for()
    shown = set(titles.all_inner_texts())
    assert {PAYLOADS[0], PAYLOADS[1], PAYLOADS[5]} <= shown, shown
    assert watch.seen == []


def test_pages_carry_a_policy_that_stops_inline_handlers_even_without_escaping(hostile, new_page):
    dashboard, _ = hostile
    page, _ = new_page(dashboard.url)
    _login(page, dashboard)
    response = page.goto("/runs")
    policy = response.headers["content-security-policy"]
    scripts = re.search(r"script-src ([^;]*)", policy).group(1)
    assert "'unsafe-inline'" not in scripts and "'sha256-" in scripts, policy
    assert "default-src 'self'" in policy and "object-src 'none'" in policy
    page.get_by_text(PAYLOADS[0]).first.wait_for()
    # what an escaping slip would do: put markup with a handler into the page
    page.evaluate("""() => { const d = document.createElement('div');
        d.innerHTML = '<img src="x" onerror="window.__ran = true">'; document.body.appendChild(d); }""")
    page.wait_for_timeout(500)
    assert page.evaluate("() => window.__ran === undefined")


def test_the_policy_leaves_the_framework_working(hostile, new_page):
    """Every page's own scripts run under the policy: no violation reported while pages load and update."""
    dashboard, ids = hostile
    page, problems = new_page(dashboard.url)
    _login(page, dashboard)
    for name, path, shown in _pages(ids):
        page.goto(path)
        page.get_by_text(shown, exact=False).first.wait_for()
    violations = [p for p in problems.items if "Content Security Policy" in p or "Content-Security-Policy" in p]
    assert violations == []

