"""The Schedules page and a batch's page in a real Chromium, on a real `dsagent serve` that fires schedules in-process."""

from __future__ import annotations

import io
import signal
import time
from pathlib import Path

import nbformat
import psutil
import pytest

from .conftest import dsagent_env, serve_dashboard
from .test_dashboard import _kernels_working_in

# one server (with its scheduler) per module: every test of it on one xdist worker
pytestmark = pytest.mark.xdist_group("panel-schedules")


def _notebook(path: Path, params: str, *cells: str) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    first = nbformat.v4.new_code_cell(params)
    first.metadata["tags"] = ["parameters"]
    nb.cells = [first, *(nbformat.v4.new_code_cell(c) for c in cells)]
    nbformat.write(nb, path)
    return path


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    home = tmp_path_factory.mktemp("sched") / "ws"
    notebooks = home / "notebooks"
    notebooks.mkdir(parents=True)
    _notebook(notebooks / "quick.ipynb", "n = 1", "print('n is', n)")
    _notebook(notebooks / "slow.ipynb", "pause = 120", "import time\ntime.sleep(pause)")
    _notebook(notebooks / "sweep.ipynb", "alpha = 0.1",
              "import time, dsagent\ntime.sleep(0.3)\ndsagent.record('score', alpha * 2)",
              "import matplotlib.pyplot as plt\nplt.plot([0, 1], [0, alpha])\nplt.show()")
    (home / "grid.yaml").write_text("alpha: [0.1, 0.2]\n")
    env = {**dsagent_env(home), "DSAGENT_SCHEDULER_TICK": "0.2", "DSAGENT_BATCH_WORKERS": "1"}
    with serve_dashboard(home, env=env) as dashboard:
        yield dashboard


def _row(page, name: str):
    return page.locator(f"tr.ds-schedule[data-name='{name}']")


def _wait_for_last_run(dashboard, name: str, status: str | None = None, timeout: float = 120) -> dict:
    """The schedule's last run (through the REST API), once it exists (and has ``status``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _, body = dashboard.get_json("api/runs?limit=20")
        runs = [r for r in body["items"] if r.get("schedule_id") == name and r["kind"] != "batch-child"]
        if runs and (status is None or runs[0]["status"] == status):
            return runs[0]
        time.sleep(0.2)
    raise AssertionError(f"no run of schedule {name} ({status or 'any status'}) appeared")


def test_create_a_schedule_checked_as_typed_then_run_it_now_edit_pause_delete(served, new_page, tmp_path):
    dashboard = served
    page, problems = new_page(dashboard.url)
    page.goto("/schedules")
    page.get_by_text("no schedules yet").wait_for()
    page.get_by_label("name", exact=True).fill("morning")
    cron = page.get_by_label("cron (minute hour day month weekday)")
    cron.fill("0 25 * * *")
    page.get_by_text("the hour field '25' is not valid").wait_for()  # said as it is typed, before any save
    assert page.get_by_role("button", name="Create schedule").is_disabled()
    page.screenshot(path=str(tmp_path / "bad-cron.png"), full_page=True)
    cron.fill("30 7 * * *")
    zone = page.get_by_label("time zone")
    zone.fill("Mars/Base")
    page.get_by_text("unknown time zone 'Mars/Base'").wait_for()
    zone.fill("Europe/Berlin")
    page.get_by_text("At 07:30 AM — next").wait_for()
    page.get_by_label("notebook (path, or a name in the workspace's notebooks/)").fill("quick.ipynb")
    page.get_by_label("parameters (name = value per line)").fill("n = 3")
    page.get_by_role("button", name="Create schedule").click()
    page.get_by_text("schedule morning created").wait_for()
    row = _row(page, "morning")
    row.get_by_text("At 07:30 AM").wait_for()
    text = row.inner_text()
    assert "Europe/Berlin" in text and "notebook quick.ipynb n=3" in text and "in " in text and "never ran" in text
    page.screenshot(path=str(tmp_path / "created.png"), full_page=True)

    # Run now: this dashboard's scheduler fires it; the run is listed, linked, and says who launched it
    page.get_by_role("button", name="Run now").click()
    run = _wait_for_last_run(dashboard, "morning", "succeeded")
    row.locator("a", has_text=str(run["id"])).wait_for(timeout=30_000)
    row.get_by_text("succeeded").wait_for()
    _, events = dashboard.get_json(f"api/runs/{run['id']}/events")
    launched = [e["payload"] for e in events["items"] if e["type"] == "launched"]
    assert launched == [{"user": "anonymous", "via": "dashboard", "schedule": "morning"}]
    _, full = dashboard.get_json(f"api/runs/{run['id']}")
    assert full["owner_pid"] == dashboard.process.pid and full["params"] == {"n": 3}
    page.screenshot(path=str(tmp_path / "ran.png"), full_page=True)
    link = row.locator("a", has_text=str(run["id"]))
    assert link.get_attribute("href") == f"./run?id={run['id']}"
    page.goto(f"/run?id={run['id']}")
    page.get_by_text("schedule fired").first.wait_for()

    # edit (no restart: the row is what the scheduler reads), pause, resume, delete
    page.goto("/schedules")
    _row(page, "morning").wait_for()
    page.get_by_role("button", name="Edit").click()
    page.get_by_text("Edit schedule morning").wait_for()
    page.get_by_label("cron (minute hour day month weekday)").fill("0 8 * * 1-5")
    page.get_by_role("button", name="Save changes").click()
    _row(page, "morning").get_by_text("At 08:00 AM, Monday through Friday").wait_for()
    page.get_by_role("button", name="Pause").click()
    _row(page, "morning").get_by_text("paused").wait_for()
    page.get_by_role("button", name="Resume").click()
    _row(page, "morning").get_by_text("paused").wait_for(state="hidden")
    page.get_by_role("button", name="Delete").click()
    page.get_by_role("button", name="Really delete?").click()
    page.get_by_text("schedule morning deleted").wait_for()
    _row(page, "morning").wait_for(state="detached")
    assert problems.items == []

    page.goto("/")
    page.get_by_text("this dashboard").first.wait_for()
    assert f"pid {dashboard.process.pid}" in page.locator(".ds-scheduler").inner_text()
    page.screenshot(path=str(tmp_path / "overview.png"), full_page=True)
    print(f"screenshots in {tmp_path}")


@pytest.mark.timeout(300)  # a LocalCluster and a fresh kernel per child: a minute and more on a loaded 2-core machine
def test_a_scheduled_batch_shows_its_children_then_the_comparison(served, new_page, tmp_path):
    dashboard = served
    page, problems = new_page(dashboard.url)
    page.goto("/schedules")
    page.get_by_label("name", exact=True).fill("sweep")
    page.get_by_label("cron (minute hour day month weekday)").fill("0 3 * * *")
    page.get_by_role("button", name="batch").click()
    page.get_by_label("notebook (path, or a name in the workspace's notebooks/)").fill("sweep.ipynb")
    page.get_by_label("grid file (YAML: alpha: [0.1, 0.5])").fill(str(dashboard.home / "grid.yaml"))
    page.get_by_role("button", name="Create schedule").click()
    _row(page, "sweep").get_by_text("batch sweep.ipynb x grid.yaml").wait_for()
    page.locator("select").first.select_option("sweep")
    page.get_by_role("button", name="Run now").click()
    batch = _wait_for_last_run(dashboard, "sweep")  # exists once its children do
    page.goto(f"/run?id={batch['id']}")
    page.get_by_text("children finished").first.wait_for(timeout=60_000)
    page.screenshot(path=str(tmp_path / "batch-running.png"), full_page=True)
    page.get_by_text("2 of 2 children finished").wait_for(timeout=120_000)
    page.get_by_text("Comparison", exact=True).wait_for(timeout=60_000)
    comparison = page.locator(".tabulator", has_text="score")
    comparison.get_by_text("succeeded").first.wait_for()
    images = comparison.locator("img")
    assert images.count() == 2  # each child's plot
    for i in range(2):  # the thumbnails load (made by the thumbnail route on first request)
        images.nth(i).wait_for()
        deadline = time.monotonic() + 60
        while not images.nth(i).evaluate("img => img.complete && img.naturalWidth > 0") and time.monotonic() < deadline:
            time.sleep(0.2)
        assert images.nth(i).evaluate("img => img.naturalWidth") > 0
    page.screenshot(path=str(tmp_path / "batch-done.png"), full_page=True)
    with page.expect_download() as info:
        page.get_by_role("button", name="Comparison as CSV").click()
    lines = Path(info.value.path()).read_text().splitlines()
    assert lines[0] == "run_id,alpha,status,seconds,score,error" and len(lines) == 3
    with page.expect_download() as info:
        page.get_by_role("button", name="Comparison as Parquet").click()
    import pandas as pd

    frame = pd.read_parquet(io.BytesIO(Path(info.value.path()).read_bytes()))
    assert sorted(frame["score"]) == pytest.approx([0.2, 0.4])
    # the children table links each child's page
    child = page.locator(".tabulator", has_text="parameters").locator("a").first
    assert child.get_attribute("href").startswith("./run?id=")
    child.click()
    page.get_by_text("batch-child").first.wait_for()
    assert problems.items == []
    print(f"screenshots in {tmp_path}")


def _kernels_started(home: Path) -> list[psutil.Process]:
    deadline = time.monotonic() + 60
    kernels: list[psutil.Process] = []
    while not kernels and time.monotonic() < deadline:
        kernels = _kernels_working_in(home)
        time.sleep(0.1)
    assert kernels, "the scheduled run's kernel never started"
    return kernels


def test_cancel_a_scheduled_run_from_its_page_then_sigterm_stops_the_dashboard_cleanly(served, new_page):
    """Last in the module: it stops the module's server. A firing of the in-process scheduler is cancelled from its
    run page (through the scheduler, not a signal to the dashboard); then SIGTERM stops the dashboard mid-run: the run
    ends cancelled, no kernel is left, the lease is given back."""
    from dsagent.artifacts.store import Store
    from dsagent.runs.schedule_spec import make_schedule
    from dsagent.settings import Settings

    dashboard = served
    settings = Settings(home=str(dashboard.home))
    with Store.open(settings=settings) as store:  # fires every second: the in-process scheduler starts it
        store.add_schedule(make_schedule("slow", "* * * * * *", notebook=dashboard.home / "notebooks" / "slow.ipynb"))
    first = _wait_for_last_run(dashboard, "slow", "running")
    kernels = _kernels_started(dashboard.home)
    page, problems = new_page(dashboard.url)
    page.goto(f"/run?id={first['id']}")
    page.get_by_text("cell started").first.wait_for(timeout=60_000)
    page.get_by_role("button", name="Cancel run").click()
    page.get_by_text("this dashboard's scheduler is stopping its firing").wait_for()
    page.locator("span", has_text="cancelled").first.wait_for(timeout=60_000)
    _, alive = psutil.wait_procs(kernels, timeout=10)
    assert alive == [] and dashboard.process.poll() is None
    assert problems.items == []

    later = _wait_for_last_run(dashboard, "slow", "running")  # the schedule goes on: its next firing
    assert later["id"] > first["id"]
    kernels = _kernels_started(dashboard.home)
    dashboard.process.send_signal(signal.SIGTERM)
    assert dashboard.process.wait(60) == 0
    _, alive = psutil.wait_procs(kernels, timeout=10)
    assert alive == []
    with Store.open(settings=settings) as store:
        assert store.get_run(first["id"]).status == "cancelled"
        assert store.get_run(later["id"]).status == "cancelled"
        assert store.scheduler_lease() is None
        assert store.active_schedule_runs("slow") == []
