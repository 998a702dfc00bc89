"""A real dashboard (``dsagent serve`` in a subprocess on a free port, tmp workspace) and a real Chromium.

One server per test module (each module starts its own with ``serve_dashboard``),
one browser per session. Everything is named by tmp dirs and free ports, so
parallel workers (pytest-xdist) do not collide.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 # every new tab made headless chromium 156 preload its own address-bar popup (a WebUI page of ~150
                 # chrome:// modules in a second renderer): as much CPU as our page's renderer, on 2 shared cores,
                 # for browser chrome that headless never shows (bench/dashboard.py traces)
                 "--disable-features=WebUIOmniboxPopup,WebUIOmniboxFullPopup,WebUIOmniboxAimPopup,PreloadTopChromeWebUI"]


@dataclass
class Dashboard:
    url: str  # http://127.0.0.1:PORT/
    home: Path
    process: subprocess.Popen
    log: Path

    def get(self, path: str, headers: dict | None = None) -> tuple[int, dict, bytes]:
        request = urllib.request.Request(self.url + path.lstrip("/"), headers=headers or {})
        opener = urllib.request.build_opener(_NoRedirect)
        try:
            with opener.open(request, timeout=30) as response:
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers), exc.read()

    def get_json(self, path: str, headers: dict | None = None) -> tuple[int, dict]:
        status, _, body = self.get(path, headers)
        return status, json.loads(body)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):  # a redirect is an answer to look at, not to follow
        return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def dsagent_env(home: Path) -> dict[str, str]:
    return {**os.environ, "DSAGENT_HOME": str(home), "DSAGENT_BACKEND": "local", "DSAGENT_KERNEL_POOL_SIZE": "0",
            "DSAGENT_DASHBOARD_POLL_INTERVAL": "0.25", "DSAGENT_DASHBOARD_LOCK_TIMEOUT": "0.5"}


@contextmanager
def serve_dashboard(home: Path, *extra: str, demo: bool = False, env: dict[str, str] | None = None) -> Iterator[Dashboard]:
    """``dsagent serve`` on a free port (``--no-demo`` unless ``demo``); stopped with SIGINT (Ctrl-C) at the end. ``env``: its
    whole environment (default ``dsagent_env(home)``; add to that for more variables)."""
    home.mkdir(parents=True, exist_ok=True)
    log = home.parent / f"{home.name}-serve.log"
    for _attempt in range(3):  # a free port can be taken between the probe and the bind
        port = free_port()
        with open(log, "wb") as out:
            process = subprocess.Popen([sys.executable, "-m", "dsagent", "serve", "--workspace", str(home), "--port", str(port),
                                        *([] if demo else ["--no-demo"]), *extra], env=env or dsagent_env(home),
                                       stdout=out, stderr=subprocess.STDOUT)
        dashboard = Dashboard(f"http://127.0.0.1:{port}/", home, process, log)
        if _wait_until_up(dashboard):
            break
        process.kill()
        process.wait()
    else:
        raise RuntimeError(f"the dashboard did not start: {log.read_text()}")
    try:
        yield dashboard
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_until_up(dashboard: Dashboard, timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if dashboard.process.poll() is not None:
            return False
        try:
            status, _, _ = dashboard.get("api/runs?limit=1")
            if status in (200, 401):
                return True
        except (OSError, http.client.HTTPException):  # another program took the port between the probe and our bind
            pass
        time.sleep(0.1)
    return False


@pytest.fixture(scope="module")
def browser():
    """One Chromium per module, stopped with it: while Playwright's sync API is started, its event loop
    counts as running in this thread, so any later test's ``asyncio.run()`` on the same worker would fail."""
    playwright_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs Debian's chromium (apt-get install chromium)")
    with playwright_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


class PageProblems:
    """Console errors, uncaught page errors and failed requests seen by one browser page."""

    def __init__(self, page) -> None:
        self.items: list[str] = []
        page.on("console", lambda m: self.items.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: self.items.append(f"page error: {e}"))
        # ERR_ABORTED: a load cut short because the test moved on to the next page, not a failure
        page.on("requestfailed", lambda r: self.items.append(f"failed request {r.url}: {r.failure}") if "ERR_ABORTED" not in (r.failure or "") else None)
        page.on("response", lambda r: self.items.append(f"HTTP {r.status} {r.url}") if r.status >= 400 else None)


@pytest.fixture
def new_page(browser, tmp_path):
    """A fresh browser context and page (own cookies), with its problems recorded."""
    contexts = []

    def make(base_url: str | None = None):
        context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True, base_url=base_url)
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(45_000)  # a fail-safe for a loaded machine, not a speed check
        return page, PageProblems(page)

    yield make
    for context in contexts:
        context.close()
