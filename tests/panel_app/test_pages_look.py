"""The dashboard's frame and the pages moved onto it, in a real Chromium: how they look at 390 and 1280 px in
light and dark (``pagecheck.look_at``), the theme following the OS and the toggle, the Runs filters in the
address, empty and not-found states, "Running now" without idle chats, and a quiet server log.

The screenshots' folder is printed (``pytest -s`` or ``-rP`` shows it; ``DSAGENT_SCREENSHOTS=DIR`` keeps
them there). Another page joins by adding a ``Look`` to ``LOOKS``.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from playwright.sync_api import expect

from dsagent.artifacts import NewArtifact, Store
from dsagent.artifacts.chats import ChatTable
from dsagent.settings import Settings
from dsagent.workspace import Workspace

from .conftest import PageProblems, dsagent_env, serve_dashboard
from .pagecheck import Look, look_at, screenshot_folder

# one dashboard server per module: every test of it on one xdist worker, so it starts once
pytestmark = pytest.mark.xdist_group("panel-look")

BULK = 60  # more runs than one page of the Runs table (50)
PLOTS = 30  # more artifacts than one page of the gallery (24)

#: the pages this module looks at; ``{name}`` fields are filled from ``seeded``'s ids
LOOKS = [
    Look("overview", "/", ".ds-stats"),
    Look("runs", "/runs", ".tabulator-row"),
    Look("runs-empty", "/runs?q=no-such-title", "text=No runs match these filters"),
    Look("run-not-found", "/run?id=999999", "text=There is no run 999999"),
    Look("artifact-not-found", "/artifact?id=999999", "text=There is no artifact 999999"),
    Look("run-bad-id", "/run?id=abc", "text=No run id abc"),
    Look("artifacts", "/artifacts", "img[src*='/thumb']"),
    Look("artifacts-empty", "/artifacts?q=no-such-name", "text=No artifacts match these filters"),
    Look("artifact-image", "/artifact?id={image}", ".ds-image-frame img"),
    Look("artifact-table", "/artifact?id={wide_table}", ".tabulator-row"),
    Look("artifact-html", "/artifact?id={html}", "iframe[sandbox='allow-scripts']"),
    Look("chat", "/chat?id={idle_chat}", "text=Revenue grew 12% over the quarter."),
    Look("notebooks", "/notebooks", ".tabulator-row"),
    Look("notebooks-none-match", "/notebooks?q=no-such-notebook", "text=No notebook names contain"),
    Look("notebook", "/notebook?path=store_digest.ipynb", ".tabulator-row"),
    Look("notebook-not-found", "/notebook?path=no_such.ipynb", "text=All notebooks"),
    Look("schedules", "/schedules", ".ds-schedule"),
]


def _png(colour: tuple[int, int, int] = (200, 80, 40)) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (90, 60), colour).save(out, format="PNG")
    return out.getvalue()


def _wide_csv() -> bytes:
    """A table wider than a phone: it must scroll inside its card, not the page."""
    header = ",".join(f"region_number_{n}" for n in range(16))
    return "\n".join([header, *(",".join(str(row * n) for n in range(16)) for row in range(40))]).encode()


def _chat_turn(store, chat_id: int) -> None:
    """A finished turn of a chat as its run's events say it (plan, a cell with its output and plot, review, answer);
    its output has a line no narrower than a long URL."""
    turn = store.create_run("agent", title="plot revenue by week", params={"task": "Plot revenue by week"}, parent_id=chat_id)
    plot = store.add_artifacts(turn.id, [NewArtifact("revenue.png", "image", "image/png", _png((40, 110, 200)), cell=1)])[0]
    url = "https://data.example.com/exports/" + "quarterly-revenue-by-region-and-week-" * 3 + "final.csv"
    store.append_events(turn.id, [
        ("launched", {"user": "analyst", "via": "dashboard", "chat": chat_id, "graph": "analysis", "model": "m", "approve": False}),
        ("agent_plan", {"plan": "1. load the table\n2. plot revenue by week"}),
        ("cell_started", {"cell": 1, "code": "df = load_table(data)\ndf.plot(x='week', y='revenue')"}),
        ("agent_cell", {"cell": 1, "status": "ok", "role": "code", "code": "df = load_table(data)\ndf.plot(x='week', y='revenue')",
                        "outputs": [{"output_type": "stream", "name": "stdout", "text": f"rows: 52 from {url}\n"}],
                        "artifacts": [{"id": plot.id, "kind": "image", "name": "revenue.png"}]}),
        ("agent_review", {"verdict": "accept", "findings": []}),
        ("agent_answer", {"answer": "Revenue grew **12%** over the quarter."}),
    ])
    store.update_run_status(turn.id, "succeeded")


def _seed(home: Path) -> dict[str, int]:
    """Runs in every status a page shows differently, two chats (one idle, one answering), an image, and more
    runs than one page holds."""
    ids: dict[str, int] = {}
    with Store.open(Workspace(home), Settings(home=str(home))) as store:
        with store.transaction() as tx:
            for number in range(BULK):
                tx.create_run("exec", status="succeeded", title=f"bulk run {number}")
            # more artifacts than a gallery page holds; not an `exec` run: the Runs test counts BULK of those
            plots = tx.create_run("notebook", status="succeeded", title="many plots")
            tx.add_artifacts(plots.id, [NewArtifact(f"sweep plot {n:02d}.png", "image", "image/png", _png((20 + 7 * n, 80, 40)), cell=n)
                                        for n in range(PLOTS)])
        report = store.create_run("notebook", title="weekly sales report", backend="local")
        image, wide, html_page = store.add_artifacts(report.id, [
            NewArtifact("revenue by week.png", "image", "image/png", _png(), cell=0),
            NewArtifact("regions by week.csv", "table", "text/csv", _wide_csv(), cell=1),
            NewArtifact("summary.html", "html", "text/html", b"<h1>Summary</h1><p>revenue grew</p>", cell=2)])
        store.update_run_status(report.id, "succeeded")
        ids.update(plots=plots.id, image=image.id, wide_table=wide.id, html=html_page.id)
        broken = store.create_run("notebook", title="broken import")
        store.update_run_status(broken.id, "failed", error="ModuleNotFoundError: no module named 'nope'")
        answer = store.create_run("agent", title="why did churn rise")
        store.update_run_status(answer.id, "unverified")
        long = store.create_run("notebook", title="long running sweep")
        store.update_run_status(long.id, "running")
        chats = ChatTable(store)
        idle = chats.create("idle chat about churn", graph="analysis", backend="local", datasets=[])
        busy = chats.create("busy chat about revenue", graph="analysis", backend="local", datasets=[])
        store.update_run_status(busy.id, "running")  # a turn runs: the chat's run says so
        _chat_turn(store, idle.id)
        ids.update(report=report.id, broken=broken.id, answer=answer.id, long=long.id, idle_chat=idle.id, busy_chat=busy.id)
        ids.update(_seed_notebooks_and_schedules(home, store))
    return ids


NOTEBOOK_PARAMETERS = ('weeks = 4  # how many weeks back\nthreshold = 0.25\nregion = "north"  # a sales region\nverbose = True\n'
                       'regions = ["north", "south"]\nlimits = {"low": 1, "high": 9}')


def _seed_notebooks_and_schedules(home: Path, store: Store) -> dict[str, int]:
    """A workspace notebook with a parameter of each type and two runs of it; schedules that fired, never fired, paused."""
    import nbformat

    from dsagent.runs.schedule_spec import make_schedule

    folder = Workspace(home).notebooks_dir
    folder.mkdir(parents=True, exist_ok=True)
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    cell = nbformat.v4.new_code_cell(NOTEBOOK_PARAMETERS)
    cell.metadata["tags"] = ["parameters"]
    nb.cells = [cell, nbformat.v4.new_code_cell("print(weeks, region)")]
    path = folder / "store_digest.ipynb"
    nbformat.write(nb, path)
    runs = []
    for weeks, status in ((4, "succeeded"), (8, "cancelled")):
        run = store.create_run("notebook", title="store_digest.ipynb", params={"weeks": weeks, "region": "north"}, backend="local")
        store.update_run_status(run.id, status)
        runs.append(run.id)
    store.add_schedule(make_schedule("store-digest", "0 6 * * 1", notebook=path, parameters={"weeks": 8}, timezone="Europe/Berlin"))
    store.set_schedule_last_run("store-digest", runs[0])
    store.add_schedule(make_schedule("nightly", "30 2 * * *", notebook=path))
    store.add_schedule(make_schedule("on-hold", "*/15 9-17 * * 1-5", notebook=path))
    store.update_schedule("on-hold", paused=True)
    return {"digest_run": runs[0]}


@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    home = tmp_path_factory.mktemp("look") / "ws"
    ids = _seed(home)
    # no LLM endpoint, whatever the environment has: the Chat page shows how to configure one and opens no kernel
    env = {k: v for k, v in dsagent_env(home).items() if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "DSAGENT_LLM_BASE_URL")}
    with serve_dashboard(home, env=env) as dashboard:
        yield dashboard, ids


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory):
    folder = screenshot_folder(tmp_path_factory)
    print(f"\nscreenshots of the dashboard's pages in {folder}")
    return folder


@pytest.mark.parametrize("look", LOOKS, ids=[look.name for look in LOOKS])
def test_page_at_phone_and_laptop_width_in_light_and_dark(seeded, browser, screenshots, look):
    dashboard, ids = seeded
    assert look_at(browser, dashboard.url, look, screenshots, ids) == []
    print(f"{look.name}: screenshots in {screenshots}")


def test_the_theme_follows_the_os_until_the_toggle_chooses(seeded, browser):
    dashboard, _ = seeded
    context = browser.new_context(color_scheme="dark", base_url=dashboard.url)
    page = context.new_page()
    page.goto("/runs")
    page.locator(".tabulator-row").first.wait_for()
    assert page.evaluate("document.documentElement.dataset.theme") == "dark"
    assert page.evaluate("getComputedStyle(document.body).backgroundColor") == "rgb(18, 18, 18)"
    with page.expect_navigation():  # the page is built again in the chosen mode, Panel's widgets included
        page.get_by_role("button", name="switch to light mode").click()
    page.locator(".tabulator-row").first.wait_for()
    assert page.evaluate("document.documentElement.dataset.theme") == "light"
    assert page.evaluate("getComputedStyle(document.body).backgroundColor") == "rgb(246, 247, 249)"
    assert page.evaluate("localStorage.getItem('dsagent-theme')") == "light"
    page.get_by_role("button", name="switch to dark mode").wait_for()
    page.goto("/")  # another page of the same browser keeps the choice, though the OS is still dark
    page.locator(".ds-stats").first.wait_for()
    assert page.evaluate("document.documentElement.dataset.theme") == "light"
    cookies = {c["name"]: c["value"] for c in context.cookies()}
    assert cookies["dsagent_theme"] == "light"  # so the server builds the next page light at once
    context.close()
    fresh = browser.new_context(color_scheme="dark", base_url=dashboard.url)  # another browser: no choice made there
    page = fresh.new_page()
    page.goto("/")
    page.locator(".ds-stats").first.wait_for()
    assert page.evaluate("document.documentElement.dataset.theme") == "dark"
    assert page.evaluate("localStorage.getItem('dsagent-theme')") is None  # following the OS is not a choice
    fresh.close()


def test_on_a_phone_the_drawer_opens_from_the_menu_button(seeded, browser):
    from .pagecheck import _PHONE

    dashboard, _ = seeded
    context = browser.new_context(viewport={"width": 390, "height": 844}, base_url=dashboard.url, **_PHONE)
    page = context.new_page()
    page.goto("/")
    page.locator(".ds-stats").first.wait_for()
    assert not page.locator(".ds-drawer").is_visible()  # out of the way of a narrow page
    page.locator(".ds-menu-button").click()
    page.locator(".ds-drawer a", has_text="Runs").click()
    page.locator(".tabulator-row").first.wait_for()
    assert page.url.endswith("/runs")
    context.close()


def _titles(page) -> list[str]:
    return page.locator(".tabulator-row .tabulator-cell[tabulator-field=title]").all_inner_texts()


def test_runs_filters_and_page_live_in_the_address(seeded, new_page):
    dashboard, _ = seeded
    page, problems = new_page(dashboard.url)
    page.goto("/runs")
    page.locator(".tabulator-row").first.wait_for()
    page.get_by_role("combobox", name="Status").click()
    page.get_by_role("listbox").get_by_text("failed", exact=True).click()
    page.wait_for_url(re.compile(r"status=failed"))
    page.get_by_text("broken import").first.wait_for()
    page.reload()  # a reload (or a bookmark) shows the same runs
    page.get_by_text("broken import").first.wait_for()
    assert _titles(page) == ["broken import"]
    assert page.get_by_role("combobox", name="Status").inner_text().strip() == "failed"
    page.goto("/runs?kind=exec")
    page.get_by_text("runs 1–50 of 60").wait_for()
    page.get_by_role("button", name="Older").click()
    page.wait_for_url(re.compile(r"kind=exec.*page=2|page=2.*kind=exec"))
    page.get_by_text("runs 51–60 of 60").wait_for()
    page.reload()
    page.get_by_text("runs 51–60 of 60").wait_for()
    assert sorted(_titles(page)) == sorted(f"bulk run {n}" for n in range(10))
    assert problems.items == []


def test_an_empty_result_says_so_and_what_to_do(seeded, new_page):
    dashboard, _ = seeded
    page, problems = new_page(dashboard.url)
    page.goto("/runs?q=no-such-title")
    page.get_by_text("No runs match these filters").wait_for()
    page.get_by_role("link", name="show all runs").wait_for()
    assert not page.locator(".tabulator-row").count()
    assert not page.get_by_text(re.compile(r"runs 0.0 of 0")).count()
    assert not page.locator(".tabulator").first.is_visible()  # no bare headers over nothing
    page.get_by_role("link", name="show all runs").click()
    page.locator(".tabulator-row").first.wait_for()
    box = page.get_by_label("Title contains")
    box.fill("zzz nothing has this")  # typed: the table goes, the empty state comes, and back
    page.get_by_text("No runs match these filters").wait_for()
    assert not page.locator(".tabulator").first.is_visible()
    box.fill("weekly")
    page.get_by_text("weekly sales report").first.wait_for()
    assert _titles(page) == ["weekly sales report"] and not page.get_by_text("No runs match these filters").is_visible()
    assert problems.items == []


def test_running_now_shows_runs_and_answering_chats_not_idle_ones(seeded, new_page):
    dashboard, ids = seeded
    page, problems = new_page(dashboard.url)
    page.goto("/")
    page.get_by_text("long running sweep").first.wait_for()
    html = page.evaluate("""() => { const out = [];
        const walk = (root) => { root.querySelectorAll('*').forEach(e => { if (e.shadowRoot) walk(e.shadowRoot) });
                                 root.querySelectorAll('table.ds-runs').forEach(t => out.push(t.textContent)) };
        walk(document); return out }""")
    running_now = html[0]  # the first runs table of the page is "Running now"
    assert "long running sweep" in running_now and "busy chat about revenue" in running_now
    assert "idle chat about churn" not in running_now
    assert "idle chat about churn" in html[1]  # it is a run all the same: the latest runs list it
    assert problems.items == []


def test_unknown_ids_show_a_not_found_page_with_a_way_back(seeded, new_page):
    dashboard, _ = seeded
    page, problems = new_page(dashboard.url)
    for path, text, back, landing in (("/run?id=999999", "There is no run 999999", "All runs", ".tabulator-row"),
                                      ("/artifact?id=999999", "There is no artifact 999999", "All artifacts", "text=revenue by week.png")):
        page.goto(path)
        page.get_by_text(text).wait_for()
        assert not page.get_by_text("loading").count()
        page.get_by_role("link", name=back).click()
        page.locator(landing).first.wait_for()
    assert problems.items == []


# -- the Artifacts gallery and an artifact's page --------------------------------------------------------------

def _card_names(page) -> list[str]:
    return page.locator(".ds-acard-name").all_inner_texts()


def test_artifacts_filters_and_page_live_in_the_address(seeded, new_page):
    dashboard, ids = seeded
    page, problems = new_page(dashboard.url)
    page.goto("/artifacts")
    page.locator(".ds-acard").first.wait_for()
    first = _card_names(page)
    # newest first: the chat turn's plot, the report's three, then the sweep's newest
    assert first == ["revenue.png", "summary.html", "regions by week.csv", "revenue by week.png",
                     *(f"sweep plot {n:02d}.png" for n in range(29, 9, -1))], first
    page.get_by_role("button", name="Older").click()
    page.wait_for_url(re.compile(r"before=\d+"))
    page.get_by_text("sweep plot 09.png").wait_for()
    older = _card_names(page)
    assert older == [f"sweep plot {n:02d}.png" for n in range(9, -1, -1)], older
    assert page.get_by_role("button", name="Older").is_disabled()  # the last page
    page.reload()  # the page is in the address
    page.get_by_text("sweep plot 09.png").wait_for()
    assert _card_names(page) == older
    page.get_by_role("button", name="Newer").click()
    page.get_by_text("summary.html").wait_for()
    assert _card_names(page) == first
    page.get_by_role("combobox", name="Kind").click()  # a filter: back to the first page, into the address
    page.get_by_role("listbox").get_by_text("table", exact=True).click()
    page.wait_for_url(re.compile(r"kind=table"))
    page.wait_for_function("() => !location.search.includes('before=')")
    page.get_by_text("regions by week.csv").wait_for()
    expect(page.locator(".ds-acard")).to_have_count(1)
    page.get_by_label("Run", exact=True).fill(str(ids["plots"]))  # typed: filters at once; into the address on Enter
    page.get_by_text("No artifacts match these filters").wait_for()
    page.get_by_label("Run", exact=True).press("Enter")
    page.wait_for_url(re.compile(rf"run={ids['plots']}"))
    page.reload()
    page.get_by_text("No artifacts match these filters").wait_for()
    assert page.get_by_role("combobox", name="Kind").inner_text().strip() == "table"
    page.get_by_label("Run", exact=True).fill("twelve")  # not a number: said where it was typed and in the list
    page.get_by_text("The run must be a number").wait_for()
    page.get_by_text("a run's id is a number").wait_for()
    assert problems.items == []


def test_a_thumbnail_s_frame_pulses_until_its_image_has_loaded(seeded, new_page):
    dashboard, _ = seeded
    page, problems = new_page(dashboard.url)
    held, released = [], []

    def hold(route) -> None:  # the thumbnails wait until the test lets them through
        route.continue_() if released else held.append(route)
    page.route("**/thumb?*", hold)
    page.goto("/artifacts")
    frame = page.locator(".ds-thumb-image").first
    frame.wait_for()
    page.wait_for_function("() => true")
    assert "ds-loaded" not in frame.get_attribute("class")
    assert frame.evaluate("e => getComputedStyle(e).animationName") == "ds-thumb-wait"  # the skeleton
    released.append(True)
    for route in held:
        route.continue_()
    page.locator(".ds-thumb-image.ds-loaded").first.wait_for()
    assert page.locator(".ds-thumb-image.ds-loaded").first.evaluate("e => getComputedStyle(e).animationName") == "none"
    assert problems.items == []


def test_an_artifact_page_has_its_download_in_the_title_row_and_frames_previews_in_the_dark(seeded, browser):
    dashboard, ids = seeded
    context = browser.new_context(viewport={"width": 1280, "height": 900}, color_scheme="dark", base_url=dashboard.url,
                                  accept_downloads=True)
    try:
        page = context.new_page()
        problems = PageProblems(page)
        page.goto(f"/artifact?id={ids['image']}")
        page.locator(".ds-image-frame img").wait_for()
        heading = page.get_by_role("heading", name="revenue by week.png")
        download = page.get_by_role("link", name="Download", exact=True)
        assert abs(heading.bounding_box()["y"] - download.bounding_box()["y"]) < 24  # one row
        with page.expect_download() as info:
            download.click()
        assert info.value.suggested_filename == "revenue by week.png"
        page.get_by_text("weekly sales report").wait_for()  # the run, by its title, with its status
        assert page.get_by_role("link", name=f"run {ids['report']}", exact=True).get_attribute("href") == f"./run?id={ids['report']}"
        assert page.locator(".ds-image-frame").evaluate("e => getComputedStyle(e).backgroundColor") == "rgb(255, 255, 255)"
        page.goto(f"/artifact?id={ids['html']}")
        frame = page.locator("iframe[sandbox='allow-scripts']")
        frame.wait_for()
        assert frame.evaluate("e => getComputedStyle(e).backgroundColor") == "rgb(255, 255, 255)"
        assert frame.evaluate("e => getComputedStyle(e).borderTopStyle") == "solid"
        page.frame_locator("iframe[sandbox='allow-scripts']").get_by_text("revenue grew").wait_for()
        assert problems.items == []
    finally:
        context.close()


# -- the Chat page ---------------------------------------------------------------------------------------------

def test_on_a_phone_the_chats_fold_above_the_chat_and_a_wide_screen_shows_them_beside_it(seeded, browser):
    from .pagecheck import _PHONE

    dashboard, ids = seeded
    phone = browser.new_context(viewport={"width": 390, "height": 844}, base_url=dashboard.url, **_PHONE)
    try:
        page = phone.new_page()
        problems = PageProblems(page)
        page.goto(f"/chat?id={ids['idle_chat']}")
        answer = page.get_by_text("Revenue grew 12% over the quarter.")
        answer.wait_for()
        other = page.get_by_role("link", name="busy chat about revenue")
        assert not other.is_visible()  # folded: the page opens at the chat, not at the list and the new-chat form
        assert not page.get_by_placeholder("e.g. sales q3").is_visible()
        page.get_by_role("button", name="Show the chats").click()
        other.wait_for()
        assert other.bounding_box()["y"] < page.locator(".ds-alert").bounding_box()["y"]  # above the chat
        page.get_by_role("button", name="Hide the chats").click()
        other.wait_for(state="hidden")
        page.locator(".ds-chat-state .ds-chip-idle").wait_for()  # the title row: what the chat does
        page.goto("/chat")  # no chat open: the list is what the page is for
        other.wait_for()
        page.get_by_role("button", name="Hide the chats").wait_for()
        assert problems.items == []
    finally:
        phone.close()
    wide = browser.new_context(viewport={"width": 1280, "height": 900}, base_url=dashboard.url)
    try:
        page = wide.new_page()
        page.goto(f"/chat?id={ids['idle_chat']}")
        page.get_by_text("Revenue grew 12% over the quarter.").wait_for()
        link = page.get_by_role("link", name="busy chat about revenue")
        link.wait_for()
        assert not page.get_by_role("button", name="Show the chats").is_visible()
        assert link.bounding_box()["x"] + 200 < page.locator(".ds-alert").bounding_box()["x"]  # beside the chat
    finally:
        wide.close()


def test_an_unknown_chat_is_a_not_found_page_with_a_way_back(seeded, new_page):
    dashboard, _ = seeded
    page, problems = new_page(dashboard.url)
    page.goto("/chat?id=999999")
    page.get_by_text("There is no chat 999999").wait_for()
    page.get_by_role("link", name="All chats").click()
    page.get_by_role("link", name="idle chat about churn").wait_for()
    assert problems.items == []


def test_the_server_log_has_no_warnings_or_tracebacks(seeded, new_page):
    """Last in the module: every page above opened and closed tabs while the pages polled."""
    dashboard, ids = seeded
    for _ in range(3):  # tabs closed mid-poll: the server was writing to them
        page, _problems = new_page(dashboard.url)
        page.goto("/runs")
        page.locator(".tabulator-row").first.wait_for()
        page.context.close()
    page, _problems = new_page(dashboard.url)
    page.goto(f"/artifact?id={ids['wide_table']}")  # the preview's table joins the page after load
    page.locator(".tabulator-row").first.wait_for()
    page.goto("/")
    page.locator(".ds-stats").first.wait_for()
    page.wait_for_timeout(1500)
    log = dashboard.log.read_text()
    assert "Traceback" not in log and "WebSocketClosedError" not in log, log[-4000:]
    assert "sizing_mode" not in log and "warning" not in log.lower(), log[-4000:]
