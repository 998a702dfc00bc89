"""The dashboard in a real Chromium: pages, live runs from the CLI, downloads, the HTML sandbox, cancel, REST."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest

from dsagent.artifacts import NewArtifact, Store
from dsagent.settings import Settings
from dsagent.workspace import Workspace

from .conftest import dsagent_env, serve_dashboard

# one dashboard server per module: every test of it on one xdist worker, so it starts once
pytestmark = pytest.mark.xdist_group("panel-dashboard")

HOSTILE_HTML = b"""<!doctype html><html><body><p id="out">not run</p><script>
var seen = [];
try { seen.push("parent:" + parent.document.title); } catch (e) { seen.push("parent blocked"); }
try { seen.push("cookie:" + document.cookie); } catch (e) { seen.push("cookie blocked"); }
document.getElementById("out").textContent = seen.join(" | ");
</script></body></html>"""


def _open_and_close(url: str, **kwargs) -> None:
    import websockets.sync.client

    with websockets.sync.client.connect(url, **kwargs):
        pass


def _png(width: int = 60, height: int = 40) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (width, height), (30, 120, 200)).save(out, format="PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    """A workspace with a finished run holding one artifact of every kind, and the dashboard serving it."""
    home = tmp_path_factory.mktemp("dash") / "ws"
    settings = Settings(home=str(home))
    with Store.open(Workspace(home), settings) as store:
        run = store.create_run("notebook", title="seeded report", params={"region": "north"}, backend="local")
        notebook = json.dumps({"cells": [{"cell_type": "code", "execution_count": 1, "id": "c1", "metadata": {}, "source": "print('hi')",
                                          "outputs": [{"output_type": "stream", "name": "stdout", "text": "hi\n"}]}],
                               "metadata": {}, "nbformat": 4, "nbformat_minor": 5}).encode()
        items = [
            NewArtifact("plot one.png", "image", "image/png", _png(), cell=0),
            NewArtifact("hostile.html", "html", "text/html", HOSTILE_HTML, cell=1),
            NewArtifact("numbers.csv", "table", "text/csv", b"a,b\n1,2\n3,4\n", cell=2),
            NewArtifact("notes.txt", "text", "text/plain", "h\u00e9llo \u2603\n".encode(), cell=3),
            NewArtifact("result.json", "json", "application/json", b'{"answer": 42}', cell=4),
            NewArtifact("report.ipynb", "notebook", "application/x-ipynb+json", notebook),
        ]
        added = {a.name: a for a in store.add_artifacts(run.id, items)}
        store.append_events(run.id, [("cell_finished", {"cell": 0, "status": "ok", "duration": 0.1})])
        store.update_run_status(run.id, "succeeded")
        child = store.create_run("batch-child", title="child of seeded", parent_id=run.id)
        store.update_run_status(child.id, "failed", error="ValueError: demo")
    with serve_dashboard(home) as dashboard:
        yield dashboard, run, added, {a.name: i.data for a, i in zip(added.values(), items)}


def test_every_page_loads_without_errors_and_shows_its_content(seeded, new_page, tmp_path):
    dashboard, run, added, _ = seeded
    page, problems = new_page(dashboard.url)
    checks = [
        ("overview", "/", "seeded report"),
        ("runs", "/runs", "seeded report"),
        ("run", f"/run?id={run.id}", "children"),
        ("artifacts", "/artifacts", "numbers.csv"),
        ("artifact-image", f"/artifact?id={added['plot one.png'].id}", "plot one.png"),
        ("artifact-table", f"/artifact?id={added['numbers.csv'].id}", "numbers.csv"),
        ("artifact-json", f"/artifact?id={added['result.json'].id}", "answer"),
        ("unknown-run", "/run?id=999999", "There is no run 999999"),
        ("unknown-artifact", "/artifact?id=999999", "There is no artifact 999999"),
        ("bad-artifact-id", "/artifact?id=abc", "No artifact id"),
    ]
    for name, path, text in checks:
        page.goto(path)
        page.get_by_text(text).first.wait_for()
        if name == "artifact-table":  # the CSV's preview, a paged table, fills in after the page's header
            page.locator(".tabulator-cell", has_text="4").first.wait_for()
        page.screenshot(path=str(tmp_path / f"{name}.png"), full_page=True)
    assert problems.items == []
    # the run page shows the rendered notebook in a sandboxed iframe
    page.goto(f"/run?id={run.id}")
    frame = page.frame_locator("iframe[sandbox='allow-scripts']")
    frame.get_by_text("hi").first.wait_for(timeout=90_000)  # the first render imports nbconvert: slow on a loaded machine
    print(f"screenshots in {tmp_path}")


def test_pages_leave_out_what_they_do_not_use(seeded, new_page):
    """es-module-shims (for Panel's ESM components, none used) and the tables' Font Awesome cost every first paint."""
    dashboard, *_ = seeded
    status, _, body = dashboard.get("runs")
    assert status == 200 and b"bokeh.min.js" in body and b"es-module-shims" not in body
    page, problems = new_page(dashboard.url)
    page.goto("/runs")
    page.locator(".tabulator-row").first.wait_for()
    # the locator does see the stylesheets in the components' shadow roots (Panel's own), just not Font Awesome's
    assert page.locator("link[href*='loading.css']").count() and not page.locator("link[href*='font-awesome']").count()
    assert problems.items == []


def test_downloads_through_the_page_and_rest_have_the_stored_bytes(seeded, new_page):
    dashboard, _, added, data = seeded
    page, problems = new_page(dashboard.url)
    for name in ("plot one.png", "notes.txt"):
        artifact = added[name]
        page.goto(f"/artifact?id={artifact.id}")
        with page.expect_download() as info:
            page.get_by_role("link", name="Download", exact=True).click()  # the title row's, on the REST route
        download = info.value
        assert Path(download.path()).read_bytes() == data[name]
        assert download.suggested_filename == name
        # the page's Panel FileDownload button: the bytes come over the websocket, not the REST route
        with page.expect_download() as info:
            page.get_by_role("button", name=f"Download {name}").click()
        assert Path(info.value.path()).read_bytes() == data[name]
        assert info.value.suggested_filename == name
        status, headers, body = dashboard.get(f"api/artifacts/{artifact.id}")
        assert status == 200 and body == data[name]
        assert headers["Content-Type"].startswith(artifact.mime)
        assert headers["Etag"] == f'"{artifact.sha256}"'
        status, _, _ = dashboard.get(f"api/artifacts/{artifact.id}", {"If-None-Match": headers["Etag"]})
        assert status == 304
        status, headers, body = dashboard.get(f"api/artifacts/{artifact.id}", {"Range": "bytes=2-5"})
        assert status == 206 and body == data[name][2:6] and headers["Content-Range"] == f"bytes 2-5/{len(data[name])}"
    assert problems.items == []


def test_an_html_artifact_cannot_reach_the_page_or_its_cookies(seeded, new_page):
    dashboard, _, added, _ = seeded
    page, _ = new_page(dashboard.url)
    page.goto("/")
    page.evaluate("document.cookie = 'dashboard_secret=s3cr3t; path=/'")
    page.goto(f"/artifact?id={added['hostile.html'].id}")
    out = page.frame_locator("iframe").locator("#out")
    out.wait_for()
    page.wait_for_function("1")  # the frame's script runs at load; its result is in #out
    text = out.text_content()
    deadline = time.monotonic() + 10
    while text == "not run" and time.monotonic() < deadline:
        time.sleep(0.1)
        text = out.text_content()
    assert "parent blocked" in text and "cookie blocked" in text, text
    assert "s3cr3t" not in text
    status, headers, _ = dashboard.get(f"api/artifacts/{added['hostile.html'].id}/preview")
    assert status == 200 and "sandbox" in headers["Content-Security-Policy"]


def test_rest_routes_page_filter_and_refuse_bad_input(seeded):
    dashboard, run, added, data = seeded
    status, body = dashboard.get_json("api/runs?limit=1")
    assert status == 200 and body["total"] == 2 and len(body["items"]) == 1 and body["next_offset"] == 1
    status, body = dashboard.get_json("api/runs?status=failed")
    assert [r["title"] for r in body["items"]] == ["child of seeded"]
    status, body = dashboard.get_json(f"api/runs/{run.id}")
    assert status == 200 and body["artifacts"] == len(added)
    status, body = dashboard.get_json(f"api/runs/{run.id}/events?after=0")
    assert [e["type"] for e in body["items"]][-1] == "status" and body["next_after"] == body["items"][-1]["seq"]
    status, body = dashboard.get_json("api/artifacts?kind=image")
    assert [a["name"] for a in body["items"]] == ["plot one.png"]
    status, body = dashboard.get_json("api/artifacts?name=*.csv&limit=5")
    assert [a["name"] for a in body["items"]] == ["numbers.csv"]
    image = added["plot one.png"]
    status, headers, made = dashboard.get(f"api/artifacts/{image.id}/thumb")  # made from the stored bytes, then kept
    assert status == 200 and headers["Content-Type"] == "image/png" and made.startswith(b"\x89PNG")
    assert dashboard.get(f"api/artifacts/{image.id}/thumb?sha256={image.sha256}")[2] == made  # the kept one, no store read
    assert dashboard.get(f"api/artifacts/{image.id}/thumb?sha256=../../etc")[2] == made  # not a hash: the normal way
    status, body = dashboard.get_json("api/runs/424242")
    assert status == 404 and "424242" in body["error"]
    status, body = dashboard.get_json("api/artifacts/424242")
    assert status == 404
    status, body = dashboard.get_json("api/runs?status=bogus")
    assert status == 400 and body["parameter"] == "status"
    status, body = dashboard.get_json("api/runs?status=unverified")  # an agent answer its outputs do not support
    assert status == 200 and body["items"] == []
    status, body = dashboard.get_json("api/artifacts?since=yesterday")
    assert status == 400 and body["parameter"] == "since"
    status, headers, zipped = dashboard.get(f"api/runs/{run.id}/export.zip")
    assert status == 200 and headers["Content-Type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(zipped)) as archive:
        manifest = json.loads(archive.read("manifest.json"))
        assert len(manifest["artifacts"]) == len(added)
        for entry in manifest["artifacts"]:
            assert archive.read(entry["file"]) == data[entry["name"]]


def _start_cli(dashboard, code: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "dsagent", "exec", code], env=dsagent_env(dashboard.home),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _kernels_working_in(home: Path) -> list[psutil.Process]:
    """ipykernels whose cwd is under ``home``: launched ones are the CLI's children, forked ones its fork template's."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if "ipykernel" in " ".join(proc.info["cmdline"] or ()) and Path(proc.cwd()).is_relative_to(home):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def _get_json(dashboard, path: str, timeout: float = 30) -> dict:
    """A REST answer, asking again while the route says the store is busy (503: a CLI run is writing)."""
    deadline = time.monotonic() + timeout
    while True:
        status, body = dashboard.get_json(path)
        if status != 503 or time.monotonic() > deadline:
            assert status == 200, body
            return body
        time.sleep(0.1)


def _wait_for_run(dashboard, title_part: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = _get_json(dashboard, f"api/runs?q={title_part}")
        if body["items"]:
            return body["items"][0]
        time.sleep(0.1)
    raise AssertionError(f"no run titled {title_part!r} appeared")


def test_a_cli_run_appears_in_the_table_and_its_page_follows_it_live(seeded, new_page):
    dashboard, _, _, _ = seeded
    page, problems = new_page(dashboard.url)
    page.goto("/runs")
    page.get_by_text("seeded report").first.wait_for()
    cli = _start_cli(dashboard, "import time; time.sleep(1.5); print('live-follow done')")
    try:
        page.get_by_text("live-follow done").first.wait_for(timeout=60_000)  # the new run's title, no reload
        run = _wait_for_run(dashboard, "live-follow")
        page.evaluate("window.__same_page = true")
        page.goto(f"/run?id={run['id']}")
        page.evaluate("window.__same_page = true")
        page.get_by_text("cell finished").first.wait_for(timeout=60_000)  # the timeline writes the type in words
        page.locator("span", has_text="succeeded").first.wait_for(timeout=30_000)
        assert page.evaluate("window.__same_page") is True  # followed live, not reloaded
        assert cli.wait(60) == 0
    finally:
        if cli.poll() is None:
            cli.kill()
    assert problems.items == []


def test_cancel_from_the_run_page_ends_the_run_cancelled_with_no_kernel_left(seeded, new_page):
    dashboard, _, _, _ = seeded
    page, problems = new_page(dashboard.url)
    cli = _start_cli(dashboard, "import time; time.sleep(120)  # cancel-me")
    try:
        run = _wait_for_run(dashboard, "cancel-me")
        deadline = time.monotonic() + 60
        kernels: list[psutil.Process] = []
        while not kernels and time.monotonic() < deadline:  # the kernel the CLI started
            kernels = _kernels_working_in(dashboard.home)
            time.sleep(0.1)
        assert kernels, "the CLI's kernel never started"
        page.goto(f"/run?id={run['id']}")
        page.get_by_text("cell started").first.wait_for(timeout=60_000)
        page.get_by_role("button", name="Cancel run").click()
        page.locator("span", has_text="cancelled").first.wait_for(timeout=60_000)
        page.get_by_text("cancel asked by anonymous").first.wait_for()  # who did it, from the run's events
        assert cli.wait(60) != 0
    finally:
        if cli.poll() is None:
            cli.kill()
    assert _get_json(dashboard, f"api/runs/{run['id']}")["status"] == "cancelled"
    events = _get_json(dashboard, f"api/runs/{run['id']}/events")
    assert any(e["type"] == "cancel_requested" and e["payload"]["user"] == "anonymous" for e in events["items"])
    gone, alive = psutil.wait_procs(kernels, timeout=10)
    assert alive == []
    assert problems.items == []


def test_a_long_locked_store_makes_pages_say_busy_and_recover(seeded, new_page):
    dashboard, _, added, stored = seeded
    page, problems = new_page(dashboard.url)
    page.goto("/runs")
    page.get_by_text("seeded report").first.wait_for()
    holder = Store(settings=Settings(home=str(dashboard.home)))
    opened, opened_problems = new_page(dashboard.url)
    with ThreadPoolExecutor(1) as pool, holder.db.locked():  # another process keeps the workspace busy (a long gc, say)
        page.get_by_text("is busy").first.wait_for()
        status, body = dashboard.get_json("api/runs")
        assert status == 503 and "busy" in body["hint"]
        # a page opened while the store is busy: its preload gives up, the page says so (not waiting for the
        # load event: its thumbnails wait for the store, up to 10 s, as an <img> cannot retry a 503)
        opened.goto("/artifacts", wait_until="domcontentloaded")
        opened.get_by_text("is busy").first.wait_for()
        # bytes (an <img>, a download link) cannot retry a 503: their routes wait for the store instead
        fetched = pool.submit(dashboard.get, f"api/artifacts/{added['plot one.png'].id}")
        time.sleep(0.5)
        assert not fetched.done()
    page.get_by_text("is busy").first.wait_for(state="hidden")
    page.get_by_text("seeded report").first.wait_for()
    opened.get_by_text("numbers.csv").first.wait_for()  # and fills in once the store is free
    holder.close()
    status, _, body = fetched.result(timeout=30)
    assert status == 200 and body == stored["plot one.png"]
    assert [p for p in problems.items + opened_problems.items if "503" not in p] == []


def test_the_websocket_refuses_foreign_origins(seeded):
    from websockets.exceptions import InvalidStatus

    dashboard, _, _, _ = seeded
    ws_url = dashboard.url.replace("http://", "ws://") + "runs/ws"
    with pytest.raises(InvalidStatus) as info:
        _open_and_close(ws_url, origin="http://evil.example", open_timeout=20)
    assert info.value.response.status_code == 403
    try:  # the same request from the server's own origin gets past the origin check
        _open_and_close(ws_url, origin=dashboard.url.rstrip("/"), open_timeout=20)
        same_origin = 101
    except InvalidStatus as exc:
        same_origin = exc.response.status_code
    assert same_origin != 403


def test_bad_numbers_and_ranges_answer_4xx_not_500(seeded):
    dashboard, _, added, data = seeded
    status, body = dashboard.get_json(f"api/runs?offset={2**63}")
    assert status == 400 and body["parameter"] == "offset"
    status, body = dashboard.get_json("api/runs?limit=" + "9" * 5000)
    assert status == 400 and body["parameter"] == "limit"
    assert dashboard.get_json("api/runs/" + "9" * 30)[0] == 404
    artifact = added["notes.txt"]
    status, headers, _ = dashboard.get(f"api/artifacts/{artifact.id}", {"Range": "bytes=" + "9" * 5000 + "-"})
    assert status == 416 and headers["Content-Range"] == f"bytes */{len(data['notes.txt'])}"
    status, _, body = dashboard.get(f"api/artifacts/{artifact.id}", {"Range": "bytes=-" + "9" * 5000})
    assert status == 206 and body == data["notes.txt"]  # a suffix longer than the file: all of it


def test_requests_under_a_foreign_host_name_are_refused(seeded):
    """DNS rebinding: a page of evil.example whose name now resolves to 127.0.0.1 gets nothing from the server."""
    dashboard, run, _, _ = seeded
    port = dashboard.url.rsplit(":", 1)[1].strip("/")
    for host in ("evil.example", f"evil.example:{port}", f"127.0.0.1.evil.example:{port}"):
        status, _, body = dashboard.get(f"api/runs/{run.id}", {"Host": host})
        assert status == 400 and b"--allowed-host" in body, host
        assert dashboard.get("runs", {"Host": host})[0] == 400
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost"):
        assert dashboard.get(f"api/runs/{run.id}", {"Host": host})[0] == 200, host


def test_two_requests_for_thumbnails_of_the_same_content_both_get_it(tmp_path, monkeypatch):
    """Two images with the same bytes share a thumbnail; a page showing both asks for it twice at once (one server, one
    pid). Both threads reach the rename with their file written: each must have written its own."""
    import threading

    from dsagent.panel_app import thumbnails

    both_written = threading.Barrier(2, timeout=10)
    rename = thumbnails.os.replace

    def replace_together(src, dst):
        both_written.wait()
        rename(src, dst)

    monkeypatch.setattr(thumbnails.os, "replace", replace_together)
    from .test_pages_look import _png

    sha = "ab" * 32
    with ThreadPoolExecutor(2) as pool:
        made = list(pool.map(lambda _: thumbnails.thumbnail(tmp_path, sha, _png), range(2)))
    assert made[0] and made[0] == made[1] and (tmp_path / "ab" / f"{sha}.png").read_bytes() == made[0]
