"""Remake the README's pictures of the dashboard: ``.venv/bin/python docs/screenshots.py``.

Starts ``dsagent serve`` with the demo (the demo notebook and the scripted analysis agent, no LLM) on a
scratch workspace, waits until the demo's runs have ended, and photographs in Debian's chromium:

- ``docs/dashboard.png``: the Overview at 1280 px, light;
- ``docs/dashboard-dark.png``: the Artifacts gallery at 1280 px, dark;
- ``docs/dashboard-phone.png``: the Runs page at a phone's 390 px, light.

Needs what ``make test`` installs (Playwright and /usr/bin/chromium).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

DOCS = Path(__file__).resolve().parent
CHROMIUM = "/usr/bin/chromium"
DEMO_SECONDS = 300  # the demo runs a notebook and an agent: a minute or two on 2 cores


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _runs(url: str) -> list[dict] | None:
    """The workspace's runs, or None while the server is not answering (starting, or busy: 503)."""
    try:
        with urllib.request.urlopen(url + "api/runs?limit=50", timeout=10) as response:
            return json.loads(response.read())["items"]
    except (OSError, ValueError, KeyError):
        return None


def _wait_for_demo(url: str, server: subprocess.Popen) -> list[dict]:
    deadline = time.monotonic() + DEMO_SECONDS
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"dsagent serve ended (exit {server.returncode}); see its output above")
        runs = _runs(url)
        if runs and len(runs) >= 2 and all(r["status"] not in ("queued", "running") for r in runs if r["kind"] != "chat"):
            return runs
        time.sleep(1)
    raise SystemExit(f"the demo's runs did not end within {DEMO_SECONDS} s; see the server's output above")


def _shoot(browser, url: str, path: Path, *, width: int, scheme: str, ready: str, phone: bool = False) -> None:
    options = {"viewport": {"width": width, "height": 900 if not phone else 844}, "color_scheme": scheme}
    if phone:
        options.update(is_mobile=True, has_touch=True, device_scale_factor=2)
    context = browser.new_context(**options)
    page = context.new_page()
    page.goto(url)
    page.locator(ready).first.wait_for(timeout=60_000)
    time.sleep(6)  # thumbnails, Material UI widgets and the executed notebook arrive after the first paint
    if not phone:
        # the whole page, by a window as tall as the page rather than full_page=True: headless chromium paints a
        # framed preview (the executed notebook's sandboxed iframe) only inside the window, and below it left a blank box
        page.set_viewport_size({"width": width, "height": min(5000, page.evaluate("document.documentElement.scrollHeight"))})
        time.sleep(1)
    page.screenshot(path=str(path))
    context.close()
    print(f"wrote {path}")


def main() -> None:
    from playwright.sync_api import sync_playwright

    home = Path(tempfile.mkdtemp(prefix="dsagent-screenshots-")) / "ws"
    home.mkdir()
    port = _free_port()
    url = f"http://127.0.0.1:{port}/"
    env = {**os.environ, "DSAGENT_HOME": str(home)}
    server = subprocess.Popen([sys.executable, "-m", "dsagent", "serve", "--workspace", str(home), "--port", str(port)], env=env)
    try:
        _wait_for_demo(url, server)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM)
            _shoot(browser, url, DOCS / "dashboard.png", width=1280, scheme="light", ready="img")
            _shoot(browser, f"{url}artifacts", DOCS / "dashboard-dark.png", width=1280, scheme="dark", ready="img[src*='/thumb']")
            _shoot(browser, f"{url}runs", DOCS / "dashboard-phone.png", width=390, scheme="light", ready=".tabulator-row",
                   phone=True)
            browser.close()
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(30)


if __name__ == "__main__":
    main()
