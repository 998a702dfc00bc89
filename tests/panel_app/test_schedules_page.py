"""The Schedules page and a batch's page in a real Chromium, on a real `dsagent serve` that fires schedules in-process."""

from __future__ import annotations

import io
import re
import signal
import time
from pathlib import Path

import nbformat
import psutil
import pytest
from playwright.sync_api import expect

from .conftest import dsagent_env, serve_dashboard
from .test_dashboard import _get_json, _kernels_working_in

SHIPPED = Path(__file__).resolve().parents[2] / "notebooks"  # the repository's notebooks: the default notebook_folders

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
    """A schedule's block on the list: its facts and its buttons."""
    return page.locator(".ds-schedule-item").filter(has=page.locator(f".ds-schedule[data-name='{name}']"))


def _pick_notebook(page, option: str) -> None:
    """Choose a notebook in the form's picker (the Notebooks page's list) by the start of its option's text."""
    page.get_by_role("combobox", name="Notebook").click()
    page.get_by_role("listbox").get_by_role("menuitem", name=re.compile("^" + re.escape(option))).click()


def _wait_for_last_run(dashboard, name: str, status: str | None = None, timeout: float = 120) -> dict:
    """The schedule's last run (through the REST API), once it exists (and has ``status``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = _get_json(dashboard, "api/runs?limit=20")  # 503 while the batch writes: asked again
        runs = [r for r in body["items"] if r.get("schedule_id") == name and r["kind"] != "batch-child"]
        if runs and (status is None or runs[0]["status"] == status):
            return runs[0]
        time.sleep(0.2)
    raise AssertionError(f"no run of schedule {name} ({status or 'any status'}) appeared")


def test_create_a_schedule_checked_as_typed_then_run_it_now_edit_pause_delete(served, new_page, tmp_path):
    dashboard = served
    page, problems = new_page(dashboard.url)
    page.goto("/schedules")
    page.get_by_text("No schedules yet").wait_for()
    page.get_by_text("dsagent schedule add").first.wait_for()  # the empty list says how to add one, here or in a terminal
    page.get_by_label("Name", exact=True).fill("morning")
    cron = page.get_by_label("Cron (minute hour day month weekday)")
    cron.fill("0 25 * * *")
    page.get_by_text("the hour field '25' is not valid").wait_for()  # said as it is typed, before any save
    expect(page.get_by_role("button", name="Create schedule")).to_be_disabled()  # (its own message: waited for)
    page.screenshot(path=str(tmp_path / "bad-cron.png"), full_page=True)
    cron.fill("30 7 * * *")
    zone = page.get_by_label("Time zone")
    zone.fill("Mars/Base")
    page.get_by_text("unknown time zone 'Mars/Base'").wait_for()
    zone.fill("Europe/Berlin")
    page.get_by_text("At 07:30 AM — next").wait_for()
    _pick_notebook(page, "quick.ipynb")
    page.get_by_label("n (int)").fill("3")
    page.get_by_role("button", name="Create schedule").click()
    page.get_by_text("schedule morning created").wait_for()
    row = _row(page, "morning")
    row.get_by_text("At 07:30 AM").wait_for()
    text = row.locator(".ds-schedule").inner_text()
    assert "Europe/Berlin" in text and "notebook quick.ipynb n=3" in text and "in " in text and "never fired" in text
    page.screenshot(path=str(tmp_path / "created.png"), full_page=True)

    # Run now: this dashboard's scheduler fires it; the list says so at once, then shows the firing: its run (linked),
    # the run's status and when; the run says who launched it
    row.get_by_role("button", name="Run now").click()
    row.get_by_text("firing now").wait_for(timeout=10_000)
    run = _wait_for_last_run(dashboard, "morning", "succeeded")
    row.locator("a", has_text=str(run["id"])).wait_for(timeout=30_000)
    row.get_by_text("succeeded").wait_for()
    last = row.locator(".ds-schedule-facts dd").nth(1)
    assert re.search(r"run \d+\s+(under a minute|\d+ min) ago", last.inner_text()), last.inner_text()
    assert last.locator("time").get_attribute("title").endswith(" UTC")  # the exact time on hover
    events = _get_json(dashboard, f"api/runs/{run['id']}/events")
    launched = [e["payload"] for e in events["items"] if e["type"] == "launched"]
    assert launched == [{"user": "anonymous", "via": "dashboard", "schedule": "morning"}]
    full = _get_json(dashboard, f"api/runs/{run['id']}")
    assert full["owner_pid"] == dashboard.process.pid and full["params"] == {"n": 3}
    page.screenshot(path=str(tmp_path / "ran.png"), full_page=True)
    link = row.locator("a", has_text=str(run["id"]))
    assert link.get_attribute("href") == f"./run?id={run['id']}"
    page.goto(f"/run?id={run['id']}")
    page.get_by_text("schedule fired").first.wait_for()

    # edit (no restart: the row is what the scheduler reads), pause, resume, delete
    page.goto("/schedules")
    _row(page, "morning").wait_for()
    _row(page, "morning").get_by_role("button", name="Edit").click()
    page.get_by_text("Edit schedule morning").wait_for()
    assert page.get_by_label("n (int)").input_value() == "3"  # the stored parameter, in the notebook's form
    page.get_by_label("Cron (minute hour day month weekday)").fill("0 8 * * 1-5")
    page.get_by_role("button", name="Save changes").click()
    _row(page, "morning").get_by_text("At 08:00 AM, Monday through Friday").wait_for()
    _row(page, "morning").get_by_role("button", name="Pause").click()
    _row(page, "morning").get_by_text("paused").first.wait_for()
    _row(page, "morning").get_by_role("button", name="Resume").click()
    _row(page, "morning").get_by_text("paused").first.wait_for(state="hidden")
    _row(page, "morning").get_by_role("button", name="Delete").click()
    _row(page, "morning").get_by_role("button", name="Really delete?").click()
    page.get_by_text("schedule morning deleted").wait_for()
    _row(page, "morning").wait_for(state="detached")
    page.get_by_text("No schedules yet").wait_for()
    assert problems.items == []

    page.goto("/")
    page.get_by_text("this dashboard").first.wait_for()
    assert f"pid {dashboard.process.pid}" in page.locator(".ds-scheduler").inner_text()
    page.screenshot(path=str(tmp_path / "overview.png"), full_page=True)
    print(f"screenshots in {tmp_path}")


def test_a_shipped_notebook_is_picked_from_the_list_with_its_parameters_checked_as_typed(served, new_page, tmp_path):
    """The issue's case: "sales_cohorts.ipynb" as the Notebooks page shows it was refused ("no notebook at
    ./sales_cohorts.ipynb"); now it is picked from that list, and its parameters are the notebook page's form."""
    dashboard = served
    page, problems = new_page(dashboard.url)
    page.goto("/schedules")
    page.get_by_label("Name", exact=True).fill("cohorts")
    _pick_notebook(page, "sales_cohorts.ipynb · shipped")
    top_n = page.get_by_label("top_n (int)")
    top_n.fill("three")
    page.get_by_text("'three' is not a whole number").wait_for()
    expect(page.get_by_role("button", name="Create schedule")).to_be_disabled()  # (its own message: waited for)
    top_n.fill("3.7")
    page.get_by_text("'3.7' is not a whole number").wait_for()
    page.screenshot(path=str(tmp_path / "wrong-parameter.png"), full_page=True)
    top_n.fill("3")
    page.get_by_label("region (str)").fill("north")
    page.get_by_role("button", name="Create schedule").click()
    page.get_by_text("schedule cohorts created").wait_for()
    # only what differs from the notebook's defaults
    _row(page, "cohorts").get_by_text("notebook sales_cohorts.ipynb region=north top_n=3", exact=True).wait_for()
    from dsagent.artifacts.store import Store
    from dsagent.settings import Settings

    with Store.open(settings=Settings(home=str(dashboard.home))) as store:
        target = store.get_schedule("cohorts").target
        store.delete_schedule("cohorts")
    assert target["notebook"] == str(SHIPPED / "sales_cohorts.ipynb") and target["parameters"] == {"region": "north", "top_n": 3}
    assert problems.items == []
    print(f"screenshots in {tmp_path}")


@pytest.mark.timeout(300)  # a LocalCluster and a fresh kernel per child: a minute and more on a loaded 2-core machine
def test_a_scheduled_batch_shows_its_children_then_the_comparison(served, new_page, tmp_path):
    dashboard = served
    page, problems = new_page(dashboard.url)
    page.goto("/schedules")
    page.get_by_label("Name", exact=True).fill("sweep")
    page.get_by_label("Cron (minute hour day month weekday)").fill("0 3 * * *")
    page.get_by_role("button", name="batch").click()
    _pick_notebook(page, "sweep.ipynb")
    page.get_by_label("Grid file (YAML: alpha: [0.1, 0.5])").fill(str(dashboard.home / "grid.yaml"))
    page.get_by_role("button", name="Create schedule").click()
    _row(page, "sweep").get_by_text("batch sweep.ipynb x grid.yaml").wait_for()
    _row(page, "sweep").get_by_role("button", name="Run now").click()
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
