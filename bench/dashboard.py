"""Benchmark of the dashboard (``dsagent serve``) in a real Chromium; prints one JSON object.

    .venv/bin/python bench/dashboard.py            # 10,000 runs, 100,000 artifacts (a few minutes)
    .venv/bin/python bench/dashboard.py --quick    # 1,000 runs, 10,000 artifacts (a smoke run)

Figures, next to the issue's targets:
- runs_first_page_s / gallery_first_page_s: browser navigation until the Runs table shows its
  first page / the gallery's first thumbnail has loaded (median of 5 in one browser context, so
  scripts and stylesheets come from its cache, as for a user moving between pages; target <= 1 s
  each); runs_cold_cache_s / gallery_cold_cache_s: the same as a first visit (a new context, empty
  cache; median of 3), next to
  floor_empty_page_s, a dashboard page with no data measured in the same loop (scripts + websocket);
  the Artifacts page's table (below the gallery) joins it 0.5 s after load and is not in the gallery
  figure. Chromium runs with the tests' CHROMIUM_ARGS (its per-tab address-bar WebUI preload off);
  docs/architecture.md "First paint" says what the time is made of;
- artifact_get_ms: GET /api/artifacts/{id} of a 30 KB PNG, p50 over 200 requests on fresh
  connections (target <= 20 ms), and the same bytes from ``python -m http.server`` in the same run;
- sessions: 10 browser pages on /runs while 4 processes write runs: time from a run's creation
  to its row on each page (p50/p95), and lock errors (writers' StoreLocked, pages' "busy" notices).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the browser tests' server helpers

from dsagent.artifacts.models import NewArtifact  # noqa: E402
from dsagent.artifacts.store import Store  # noqa: E402
from dsagent.settings import Settings  # noqa: E402
from panel_app.conftest import CHROMIUM, CHROMIUM_ARGS, free_port, serve_dashboard  # noqa: E402

WRITER = r"""
import sys, time
from dsagent.artifacts.store import Store
from dsagent.errors import StoreLocked
from dsagent.settings import Settings
home, tag, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
store = Store(settings=Settings(home=home)); store.setup()
errors = written = 0
end = time.monotonic() + seconds
while time.monotonic() < end:
    try:
        run = store.create_run("exec", title=f"bench-{tag}-{time.time():.6f}")
        store.append_events(run.id, [("cell_finished", {"cell": 0, "status": "ok"})])
        store.update_run_status(run.id, "succeeded")
        written += 1
    except StoreLocked:
        errors += 1
    time.sleep(0.2)
print(written, errors)
"""


def png(width: int, height: int, seed: int) -> bytes:
    from PIL import Image

    image = Image.frombytes("RGB", (width, height), os.urandom(width * height * 3) if seed < 0 else bytes((seed * 7 + i) % 256 for i in range(width * height * 3)))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def fill(home: Path, runs: int, artifacts: int) -> dict:
    """runs and artifacts through the store's transactions, 500 runs per transaction."""
    t0 = time.perf_counter()
    store = Store(settings=Settings(home=str(home)))
    store.setup()
    images = [png(160, 100, seed) for seed in range(12)]
    big = png(100, 100, -1)  # random pixels: ~30 KB, the download figure's file
    # artifacts go to the newest tenth of the runs (100 each at full size): one multi-row insert per run
    # fills 100,000 in minutes; the other runs have none, as exec runs often do
    with_artifacts = max(1, runs // 10)
    per_run = max(1, artifacts // with_artifacts)
    png_id = None
    for first in range(0, runs, 500):
        with store.transaction() as tx:
            for i in range(first, min(first + 500, runs)):
                run = tx.create_run("notebook" if i % 3 else "exec", status="succeeded" if i % 10 else "failed", title=f"bench run {i}")
                items = [NewArtifact(f"plot-{i}-{k}.png", "image", "image/png", images[(i + k) % len(images)], cell=k) if k % 2 == 0
                         else NewArtifact(f"data-{i}-{k}.json", "json", "application/json", b'{"i": %d}' % (i % 50), cell=k)
                         for k in range(per_run if i >= runs - with_artifacts else 0)]
                if i == runs - 1:
                    items.append(NewArtifact("download.png", "image", "image/png", big))
                added = tx.add_artifacts(run.id, items)
                if i == runs - 1:
                    png_id = added[-1].id
    counts = store.counts()
    store.close()
    return {"seconds": round(time.perf_counter() - t0, 1), "runs": counts["runs"], "artifacts": counts["artifacts"], "png_id": png_id,
            "png_bytes": len(big), "png": big}


def reuse(home: Path) -> dict | None:
    """What ``fill`` returned, for a workspace it filled before; None if ``home`` holds no runs yet."""
    if not (home / "dsagent.duckdb").exists():
        return None
    store = Store(settings=Settings(home=str(home)))
    store.setup()
    try:
        counts = store.counts()
        found = store.search_artifacts(name="download.png", limit=1).items
        if not counts["runs"] or not found:
            return None
        _, data = store.read_artifact(found[0].id)
    finally:
        store.close()
    return {"seconds": 0, "reused": str(home), "runs": counts["runs"], "artifacts": counts["artifacts"], "png_id": found[0].id,
            "png_bytes": len(data), "png": data}


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def timed_gets(url: str, n: int) -> list[float]:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        with urllib.request.urlopen(url, timeout=30) as response:
            response.read()
        times.append((time.perf_counter() - t0) * 1000)
    return times


TOP_TITLE = ".tabulator-row .tabulator-cell[tabulator-field=title]"  # the Runs table's first row, once shown


def first_pages(browser, base: str, repeats: int = 5) -> dict:
    runs, gallery, floor = [], [], []
    context = browser.new_context()  # one user: the first visit loads Bokeh/Panel's scripts, later ones have them cached
    for _ in range(repeats):
        page = context.new_page()
        # the floor: a dashboard page with no data (the frame and a notice, no store read, no table), i.e. what
        # loading Bokeh/Panel and one websocket costs on this machine now
        t0 = time.perf_counter()
        page.goto(base + "artifact?id=none")
        page.get_by_text("No artifact id").first.wait_for(timeout=60_000)
        floor.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        page.goto(base + "runs")
        # the first row's title cell shown (not a title text: a reused --workspace has the session writers' runs on top)
        page.locator(TOP_TITLE).first.wait_for(timeout=60_000)
        runs.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        page.goto(base + "artifacts")
        thumb = page.locator("img[src*='/thumb']").first  # Playwright's locators pierce Panel's shadow roots
        thumb.wait_for(timeout=60_000)
        while not thumb.evaluate("i => i.complete && i.naturalWidth > 0"):
            time.sleep(0.01)
        gallery.append(time.perf_counter() - t0)
        page.close()
    context.close()
    cold_runs, cold_gallery = [], []
    for _ in range(3):  # a first visit: a new browser context, nothing cached (scripts fetched and compiled afresh)
        for target, path, seen in ((cold_runs, "runs", TOP_TITLE), (cold_gallery, "artifacts", "img[src*='/thumb']")):
            context = browser.new_context()
            page = context.new_page()
            t0 = time.perf_counter()
            page.goto(base + path)
            found = page.locator(seen).first
            found.wait_for(timeout=60_000)
            while path == "artifacts" and not found.evaluate("i => i.complete && i.naturalWidth > 0"):
                time.sleep(0.01)
            target.append(time.perf_counter() - t0)
            context.close()
    return {"runs_first_page_s": round(statistics.median(runs), 3), "gallery_first_page_s": round(statistics.median(gallery), 3),
            "runs_cold_cache_s": round(statistics.median(cold_runs), 3), "gallery_cold_cache_s": round(statistics.median(cold_gallery), 3),
            "floor_empty_page_s": round(statistics.median(floor), 3),
            "runs_over_floor": round(statistics.median(runs) / statistics.median(floor), 2),
            "gallery_over_floor": round(statistics.median(gallery) / statistics.median(floor), 2),
            "runs_first_visit_s": round(runs[0], 3), "gallery_first_visit_s": round(gallery[0], 3),
            "runs_first_page_all": [round(x, 3) for x in runs], "gallery_first_page_all": [round(x, 3) for x in gallery]}


def sessions(browser, base: str, home: Path, seconds: float = 15) -> dict:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    contexts = [browser.new_context() for _ in range(10)]
    pages = [c.new_page() for c in contexts]
    for page in pages:
        page.goto(base + "runs")
        page.locator(TOP_TITLE).first.wait_for(timeout=60_000)
    started = time.time()  # a reused workspace (--workspace) holds bench runs of earlier invocations: not updates
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(home), str(k), str(seconds)], stdout=subprocess.PIPE, text=True)
               for k in range(4)]
    seen: list[set] = [set() for _ in pages]
    latencies, busy = [], 0
    end = time.monotonic() + seconds + 2
    while time.monotonic() < end:
        for index, page in enumerate(pages):
            cell = page.locator(TOP_TITLE).first
            try:
                title = cell.text_content(timeout=5000) if cell.count() else None
            except PlaywrightTimeout:  # the row was being redrawn (a loaded machine): look again next round
                title = None
            now = time.time()
            if title and title.startswith("bench-") and title not in seen[index] and float(title.rsplit("-", 1)[1]) >= started:
                seen[index].add(title)
                latencies.append(now - float(title.rsplit("-", 1)[1]))
            if index == 0 and page.get_by_text("is busy").count():
                busy += 1
        time.sleep(0.05)
    written = errors = 0
    for writer in writers:
        out, _ = writer.communicate(timeout=60)
        w, e = out.split()
        written, errors = written + int(w), errors + int(e)
    for context in contexts:
        context.close()
    return {"pages": len(pages), "writers": 4, "runs_written": written, "updates_seen": len(latencies),
            "update_p50_s": round(percentile(latencies, 0.5), 3) if latencies else None,
            "update_p95_s": round(percentile(latencies, 0.95), 3) if latencies else None,
            "writer_lock_errors": errors, "busy_notices_seen": busy}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--workspace", metavar="DIR", help="keep the generated workspace here and reuse it on the next run (filling takes minutes)")
    args = parser.parse_args()
    runs, artifacts = (1_000, 10_000) if args.quick else (10_000, 100_000)
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="dsagent-bench-dash-") as tmp:
        home = Path(args.workspace) if args.workspace else Path(tmp) / "ws"
        filled = reuse(home) or fill(home, runs, artifacts)
        result: dict = {"machine_note": "2 shared cores; other work may be running", "fill": {k: v for k, v in filled.items() if k != "png"}}
        static_dir = Path(tmp) / "static"
        static_dir.mkdir()
        (static_dir / "download.png").write_bytes(filled["png"])
        static_port = free_port()
        static = subprocess.Popen([sys.executable, "-m", "http.server", str(static_port), "--bind", "127.0.0.1", "--directory", str(static_dir)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            with serve_dashboard(home) as dashboard:
                timed_gets(dashboard.url + f"api/artifacts/{filled['png_id']}", 20)  # warm
                ours = timed_gets(dashboard.url + f"api/artifacts/{filled['png_id']}", 200)
                time.sleep(0.2)
                plain = timed_gets(f"http://127.0.0.1:{static_port}/download.png", 200)
                result["artifact_get_ms"] = {"p50": round(statistics.median(ours), 2), "p95": round(percentile(ours, 0.95), 2),
                                             "static_server_p50": round(statistics.median(plain), 2),
                                             "ratio_p50": round(statistics.median(ours) / statistics.median(plain), 2),
                                             "target_p50": 20}
                with sync_playwright() as playwright:
                    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                    result["first_page"] = {**first_pages(browser, dashboard.url), "target_s": 1.0}
                    print(json.dumps({"first_page": result["first_page"]}), file=sys.stderr, flush=True)  # kept if a later part fails
                    result["sessions"] = sessions(browser, dashboard.url, home)
                    browser.close()
        finally:
            static.terminate()
            static.wait()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
