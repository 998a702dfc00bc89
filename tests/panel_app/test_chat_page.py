"""The Chat page in a real Chromium against a real ``dsagent serve`` whose agents talk to the scripted
OpenAI-compatible server (loopback HTTP, the real openai SDK) and run code in real local kernels.

One server for the module (restarted once, by the test that checks a chat survives a restart), one
browser page and one chat shared by the tests in order: upload, two turns with a plot and live steps,
Stop and Cancel, approval with an edit, the read-only page without an LLM, restart. A second server on
the same workspace, without an LLM endpoint, boots in the background meanwhile. The LLM script is added
per test (``llm.add``), so each test scripts only its turn.
"""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path
from urllib.parse import quote

import psutil
import pytest
from playwright.sync_api import expect

from dsagent.artifacts import Store
from dsagent.settings import Settings
from dsagent.testing.llm_server import LLMServer, Reply, ToolCall
from dsagent.workspace import Workspace

from .conftest import PageProblems, dsagent_env, serve_dashboard
from .pagecheck import Look, look_at, screenshot_folder

pytestmark = pytest.mark.xdist_group("panel-chat")

ACCEPT = Reply('{"verdict": "accept", "findings": []}', role="reviewer")
# the cell waits for the test to say go (a file), so "the steps show while the cell runs" needs no timed sleep
LOAD_AND_PLOT = ("import os, time\nimport matplotlib.pyplot as plt\n"
                 "df = load_table(data)\nprint('rows:', len(df))\n"
                 "for i in range(1200):\n    if os.path.exists({go!r}):\n        break\n    print('waiting', i, flush=True)\n    time.sleep(0.2)\n"
                 "df.plot(x='x', y='y')\nplt.show()")
USE_DF = "print('sum y:', df['y'].sum())"  # turn 2: `df` from turn 1, not loaded again
CSV = "x,y\n1,2\n2,4\n3,5\n4,9\n"


def _env(home: Path, llm: LLMServer | None) -> dict[str, str]:
    env = {k: v for k, v in dsagent_env(home).items() if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "DSAGENT_LLM_BASE_URL")}
    env.update(DSAGENT_AGENT_BACKEND="local", DSAGENT_AGENT_CELL_TIMEOUT="60", DSAGENT_LLM_MODEL="scripted-model",
               DSAGENT_LLM_BACKOFF_INITIAL="0.01", DSAGENT_LLM_BACKOFF_MAX="0.05", DSAGENT_DASHBOARD_UPLOAD_LIMIT="1MiB")
    if llm is not None:
        env.update(OPENAI_BASE_URL=llm.base_url, OPENAI_API_KEY="sk-test-0123456789")
    return env


class Served:
    """The module's server, restartable (same workspace), and the chat the tests share."""

    def __init__(self, home: Path, llm: LLMServer | None) -> None:
        self.home, self.llm = home, llm
        self.chat_id: int | None = None
        self._cm = None
        self.dashboard = None

    def start(self) -> None:
        self._cm = serve_dashboard(self.home, "--no-scheduler", env=_env(self.home, self.llm))
        self.dashboard = self._cm.__enter__()

    def stop(self) -> None:
        if self._cm is not None:
            self._cm.__exit__(None, None, None)
            self._cm = None


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    home = tmp_path_factory.mktemp("chat") / "ws"
    with LLMServer([]) as llm:
        served = Served(home, llm)
        served.start()
        # the same workspace without an LLM endpoint, booting while the first tests run
        served.no_llm = Served(home, None)

        def boot() -> None:
            served.no_llm.start()
            for path in ("chat", ""):  # a fresh server's first page of each kind pays Panel's lazy imports: here, not in the test
                try:
                    served.no_llm.dashboard.get(path)
                except OSError:
                    pass
        served.no_llm_boot = threading.Thread(target=boot, daemon=True)
        served.no_llm_boot.start()
        try:
            yield served
        finally:
            served.no_llm_boot.join(60)
            served.no_llm.stop()
            served.stop()


@pytest.fixture(scope="module")
def chat_page(browser):
    """One page for the module's tests (they follow one chat in order), with its problems recorded."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(45_000)  # a fail-safe for a loaded machine, not a speed check
    yield page, PageProblems(page)
    context.close()


def _store(home: Path) -> Store:
    store = Store(Workspace(home), Settings(home=str(home)))
    store.setup()
    return store


def _ask(page, text: str) -> None:
    box = page.locator("textarea[placeholder^='Ask about the data']")
    box.fill(text)
    box.press("Enter")


def _kernels_of(home: Path) -> list[psutil.Process]:
    """Live processes working inside the workspace: the kernels (their work dirs are under it)."""
    found = []
    for process in psutil.process_iter():
        try:
            if process.status() != psutil.STATUS_ZOMBIE and process.cwd().startswith(str(home)):
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def _store_run_status(home: Path, run_id: int) -> str:
    store = _store(home)
    try:
        return store.get_run(run_id).status
    finally:
        store.close()


def _latest_turn(home: Path, chat_id: int):
    store = _store(home)
    try:
        return store.list_runs(parent_id=chat_id, kind="agent", limit=1).items[0]
    finally:
        store.close()


def test_upload_then_two_turns_with_a_plot_stream_live_and_share_the_kernel(served, chat_page, browser, tmp_path):
    page, problems = chat_page
    page.goto(served.dashboard.url + "chat")
    page.get_by_text("No chats yet", exact=False).first.wait_for()
    # a wrong type is refused with a message and nothing is written
    bad = tmp_path / "notes.txt"
    bad.write_text("not data")
    page.locator("input[type=file]").set_input_files(str(bad))
    page.get_by_text("received: notes.txt").wait_for()
    page.get_by_role("button", name="Create chat").click()
    page.get_by_text("is not a data file the agents read").wait_for()
    assert not (served.home / "chats").exists()
    # too big (over the 1 MiB limit of this server): the browser refuses it, not one chunk is sent
    page.goto(served.dashboard.url + "chat")
    big = tmp_path / "big.csv"
    big.write_text("x,y\n" + "1,2\n" * 300_000)
    page.locator("input[type=file]").set_input_files(str(big))
    page.get_by_text("File is too large", exact=True).wait_for()
    page.screenshot(path=str(tmp_path / "chat-upload-too-large.png"))
    shown = page.locator(".filepond--file-status-sub").inner_text()
    assert shown.startswith("Maximum file size is 1"), shown  # FilePond's words, in the hint's unit (MB)
    page.get_by_text("up to 1.0 MB (1 MiB) each").wait_for()
    page.wait_for_timeout(500)
    assert page.get_by_text("received:").count() == 0  # the server got no chunk of it
    page.goto(served.dashboard.url + "chat")

    data = tmp_path / "points.csv"
    data.write_text(CSV)
    page.locator("input[type=file]").set_input_files(str(data))
    page.get_by_text("received: points.csv").wait_for()
    page.get_by_placeholder("e.g. sales q3").fill("points")
    page.get_by_role("button", name="Create chat").click()
    page.wait_for_url("**/chat?id=*")
    served.chat_id = int(page.url.split("id=")[1])
    page.get_by_text("Plot the distribution of x").wait_for()  # suggested from the uploaded file's columns
    page.get_by_text("0 turns").wait_for()  # the sidebar
    page.get_by_text("kernel: open in this server").wait_for()  # opened when the page loaded, before the first question

    go = tmp_path / "go"
    served.llm.add(Reply("1. load the table\n2. plot y against x"),
                   Reply(tool_calls=[ToolCall("run_code", {"code": LOAD_AND_PLOT.format(go=str(go))})]),
                   Reply("There are 4 rows; the plot shows y growing with x."), ACCEPT)
    _ask(page, "How many rows, and plot y against x")
    page.get_by_text("How many rows, and plot y against x").first.wait_for()  # the question, at once
    # steps show while the turn runs: the plan and the running cell appear before the answer exists
    page.get_by_text("plot y against x", exact=True).first.wait_for()  # the plan (a markdown list)
    page.get_by_text("Cell 2 · running…").wait_for()
    page.locator(".ds-chat-state .ds-chip-running", has_text="answering").wait_for()  # the title row says what the chat does
    # its prints stream while it runs (a line every 0.2 s), and the feed follows them
    page.get_by_text(re.compile(r"waiting 5\b")).first.wait_for()
    assert page.get_by_text("There are 4 rows").count() == 0
    expect(page.get_by_text(re.compile(r"waiting 5\b")).last).to_be_in_viewport()
    page.locator(".ds-chat-list .ds-chip-running", has_text="answering").wait_for()  # the sidebar says what the chat does
    assert _store_run_status(served.home, served.chat_id) == "running"
    # a second browser on the same chat follows the same live run (it reads the run's events, not the first page)
    other = browser.new_context(viewport={"width": 1280, "height": 900})
    second = other.new_page()
    second_problems = PageProblems(second)
    second.goto(page.url)
    second.get_by_text("Cell 2 · running…").wait_for()
    # the second reader scrolls up to read the question: the prints that keep coming do not pull it back down
    question = second.locator(".ds-ask", has_text="How many rows, and plot y against x").first
    second.get_by_text("kernel: open in this server").wait_for()  # the page has loaded: its opening scroll to the end was sent
    feed = second.locator(".chat-feed-log").element_handle()
    dims = "n => [n.scrollTop, n.scrollHeight, n.clientHeight]"
    assert feed.evaluate("n => n.scrollHeight > n.clientHeight"), f"the feed should overflow while the cell prints: {feed.evaluate(dims)}"
    second.wait_for_function("n => n.scrollHeight - n.scrollTop - n.clientHeight < 40", arg=feed)  # it opened at the end
    feed.evaluate("n => { n.scrollTop = 0 }")
    seen = int(re.findall(r"waiting (\d+)", second.locator(".ds-out").last.inner_text())[-1])
    second.get_by_text(re.compile(rf"waiting {seen + 8}\b")).first.wait_for(state="attached")  # more prints arrived
    expect(question).to_be_in_viewport()
    assert feed.evaluate("n => n.scrollTop") < 50, f"{feed.evaluate(dims)}: the feed followed the newest print although the reader had scrolled up"
    go.touch()  # the cell goes on
    page.get_by_text("There are 4 rows; the plot shows y growing with x.").wait_for()
    second.get_by_text("There are 4 rows; the plot shows y growing with x.").wait_for()
    other.close()
    assert second_problems.items == [], second_problems.items
    page.get_by_text("rows: 4").first.wait_for()
    plot = page.locator("img.ds-plot").first
    plot.wait_for()
    assert plot.get_attribute("src").startswith("./api/artifacts/")
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=plot.element_handle())  # the PNG loaded
    page.get_by_text("Reviewer: accept").wait_for()
    page.get_by_text("1 turn ·").wait_for()  # the sidebar's count follows without a reload
    page.locator(".ds-chat-state .ds-chip-idle", has_text="idle").wait_for()
    assert _store_run_status(served.home, served.chat_id) == "idle"  # not "running" in Runs and on the Overview

    served.llm.add(Reply("1. sum y of the loaded table"), Reply(tool_calls=[ToolCall("run_code", {"code": USE_DF})]),
                   Reply("The sum of y is 20."), ACCEPT)
    _ask(page, "And the sum of y?")
    page.get_by_text("The sum of y is 20.").wait_for()
    page.get_by_text("sum y: 20").first.wait_for()  # `df` from turn 1 was still in the kernel
    page.get_by_text("2 turns").wait_for()
    page.screenshot(path=str(tmp_path / "chat-two-turns.png"), full_page=True)
    page.reload()  # the feed opens at the newest turn, not at the first
    expect(page.get_by_text("The sum of y is 20.")).to_be_in_viewport()
    expect(page.get_by_text("How many rows, and plot y against x").first).not_to_be_in_viewport()
    follow_up = [r for r in served.llm.requests if "sum of y" in json.dumps(r.messages)][0]
    assert "df = load_table(data)" in json.dumps(follow_up.messages)  # the history carried turn 1's code
    # who did what: the turn records that it came from the dashboard
    turn = _latest_turn(served.home, served.chat_id)
    store = _store(served.home)
    try:
        launched = [e.payload for e in store.events(turn.id) if e.type == "launched"]
    finally:
        store.close()
    assert launched == [{"user": "anonymous", "via": "dashboard", "chat": served.chat_id, "graph": "analysis",
                         "model": "scripted-model", "approve": False}]
    # the whole chat into the Notebooks page's folder
    page.get_by_role("button", name="Save chat as notebook").click()
    toast = page.locator(".ds-toast-box")
    toast.wait_for()
    expect(toast).to_be_in_viewport()  # not below the fold
    saved = served.home / "notebooks" / "chat-points.ipynb"
    assert toast.get_by_role("link", name="chat-points.ipynb").get_attribute("href") == f"./notebook?path={quote(str(saved), safe='')}"
    page.screenshot(path=str(tmp_path / "chat-saved-toast.png"))
    assert saved.is_file() and "sum y" in saved.read_text()
    # one turn on its own, from its button
    page.get_by_role("button", name="Save turn as notebook").first.click()
    page.get_by_text("-turn-").first.wait_for()
    assert len(list((served.home / "notebooks").glob("chat-points-turn-*.ipynb"))) == 1
    # the saved chat re-runs from its form on other data: both turns' cells, in a fresh kernel
    more = tmp_path / "more.csv"
    more.write_text("x,y\n1,1\n2,2\n3,3\n4,4\n5,5\n6,6\n")
    # in a page of its own: the module's chat page stays on the chat for the next tests
    runner = browser.new_context(viewport={"width": 1280, "height": 900})
    rerun = runner.new_page()
    rerun.set_default_timeout(45_000)
    rerun_problems = PageProblems(rerun)
    rerun.goto(served.dashboard.url + f"notebook?path={quote(str(saved), safe='')}")
    field = rerun.get_by_label("data (str)", exact=True)  # the notebook page's form (Material UI text boxes)
    field.fill(str(more))
    field.press("Enter")
    rerun.get_by_role("button", name="Run", exact=True).click()
    rerun.wait_for_url(re.compile(r".*/run\?id=\d+"), timeout=120_000)
    rerun.get_by_text("sum y: 21").first.wait_for(timeout=90_000)  # turn 2's cell on the new data (turn 1's `df`)
    rerun.get_by_text("rows: 6").first.wait_for()
    rerun.screenshot(path=str(tmp_path / "chat-notebook-rerun.png"), full_page=True)
    runner.close()
    assert rerun_problems.items == [], rerun_problems.items
    assert problems.items == [], problems.items
    print(f"screenshots in {tmp_path}")


def test_stop_and_cancel_from_the_run_page_end_a_long_cell_and_the_chat_goes_on(served, chat_page, browser):
    """Stop on the chat page, then Cancel on a running turn's own run page (a chat's turn runs inside the
    dashboard process: Cancel must stop it through the chat, never signal the dashboard); then the next turn
    finds what earlier cells made."""
    page, problems = chat_page
    served.llm.add(Reply("1. wait a long time"), Reply(tool_calls=[ToolCall("run_code", {"code": "import time\ntime.sleep(120)"})]))
    _ask(page, "Wait for two minutes")
    page.get_by_text("running…").first.wait_for()
    page.get_by_role("button", name="Stop").click()
    page.get_by_text("the partial notebook is kept; the chat goes on").wait_for()
    assert _latest_turn(served.home, served.chat_id).status == "cancelled"

    served.llm.add(Reply("1. wait"), Reply(tool_calls=[ToolCall("run_code", {"code": "import time\ntime.sleep(120)"})]))
    _ask(page, "Wait again")
    page.get_by_text("running…").first.wait_for()
    turn = _latest_turn(served.home, served.chat_id)
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        run_page = context.new_page()
        run_problems = PageProblems(run_page)
        run_page.goto(f"{served.dashboard.url}run?id={turn.id}")
        run_page.get_by_role("button", name="Cancel run").click()
        run_page.get_by_text("turn stopped").wait_for()
        run_page.get_by_text("cancelled").first.wait_for()
    finally:
        context.close()
    assert _latest_turn(served.home, served.chat_id).status == "cancelled"
    assert served.dashboard.process.poll() is None  # the dashboard itself is still up
    page.get_by_text("stopped: the partial notebook is kept").nth(1).wait_for()  # the chat page follows that too

    served.llm.add(Reply("1. print"), Reply(tool_calls=[ToolCall("run_code", {"code": "print('after stop', df.shape)"})]),
                   Reply("Still here."), ACCEPT)
    _ask(page, "Are you still there?")
    page.get_by_text("Still here.").wait_for()
    page.get_by_text("after stop (4, 2)").first.wait_for()  # the kernel kept what earlier cells made
    assert problems.items == [] and run_problems.items == [], (problems.items, run_problems.items)


def test_approval_with_an_edit_runs_and_records_the_edited_code(served, chat_page, tmp_path):
    page, problems = chat_page
    # the page's first checkbox, "approve each cell (Run / Edit / Reject)" (the frame's menu button is a checkbox too)
    approve = page.locator("input[type=checkbox]:not(.ds-menu-state)").first
    approve.check()
    assert approve.is_checked()
    served.llm.add(Reply("1. print"), Reply(tool_calls=[ToolCall("run_code", {"code": "print('as the model wrote it')"})]))
    _ask(page, "Print something")
    page.get_by_text("Waiting for your approval").wait_for()
    boxes = page.locator("textarea")
    editor = next(boxes.nth(i) for i in range(boxes.count()) if "as the model wrote it" in boxes.nth(i).input_value())
    editor.fill("print('edited by ' + 'the user')")
    served.llm.add(Reply("Printed what you asked."), ACCEPT)
    page.get_by_role("button", name="Edit", exact=True).click()
    page.get_by_text("Printed what you asked.").wait_for()
    page.get_by_text("edited by the user").first.wait_for()
    page.screenshot(path=str(tmp_path / "chat-approval.png"), full_page=True)
    turn = _latest_turn(served.home, served.chat_id)
    store = _store(served.home)
    try:
        cells = [e.payload for e in store.events(turn.id) if e.type == "agent_cell" and e.payload.get("role") != "setup"]
    finally:
        store.close()
    assert [c["code"] for c in cells] == ["print('edited by ' + 'the user')"]
    assert problems.items == [], problems.items


def test_without_an_llm_the_page_shows_the_history_read_only_and_how_to_configure_one(served, browser, tmp_path):
    served.no_llm_boot.join(120)
    assert served.no_llm.dashboard is not None, "the second server did not start"
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        page = context.new_page()
        problems = PageProblems(page)
        page.goto(f"{served.no_llm.dashboard.url}chat?id={served.chat_id}")
        page.get_by_text("No LLM endpoint is configured").first.wait_for()
        assert page.get_by_text("OPENAI_BASE_URL").count() > 0
        page.get_by_text("The sum of y is 20.").wait_for()  # the earlier turns, read from the store
        page.get_by_text("Printed what you asked.").wait_for()
        box = page.locator("textarea[placeholder*='read-only']")
        assert box.is_disabled()
        page.screenshot(path=str(tmp_path / "chat-no-llm.png"), full_page=True)
        page.goto(served.no_llm.dashboard.url)  # the other pages work without an endpoint: the Overview lists the latest turn
        page.get_by_text("Print something").first.wait_for()
        page.wait_for_load_state("networkidle")  # its thumbnails load after the page: not into a server that is gone
        assert problems.items == [], problems.items
    finally:
        context.close()
    served.no_llm.stop()


def test_the_chat_survives_a_restart_and_continues(served, chat_page, tmp_path):
    page, problems = chat_page
    page.goto("about:blank")
    kernels = _kernels_of(served.home)
    assert kernels, "the open chat has a kernel process"
    served.stop()  # Ctrl-C: the chats' kernels are shut down with the server
    gone, alive = psutil.wait_procs(kernels, timeout=10)
    assert not alive, [p.cmdline() for p in alive]
    # started again: the chat continues, its kernel rebuilt by replaying the recorded cells
    served.start()  # on another port
    page.goto(f"{served.dashboard.url}chat?id={served.chat_id}")
    page.get_by_text("Printed what you asked.").wait_for()
    served.llm.add(Reply("1. use df"), Reply(tool_calls=[ToolCall("run_code", {"code": "print('after restart', df['y'].max())"})]),
                   Reply("Max y is 9."), ACCEPT)
    _ask(page, "What is the max of y?")
    page.get_by_text("Max y is 9.").wait_for()
    page.get_by_text("after restart 9").first.wait_for()
    page.screenshot(path=str(tmp_path / "chat-after-restart.png"), full_page=True)
    assert problems.items == [], problems.items


def test_the_chat_page_at_phone_and_laptop_width_in_light_and_dark(served, browser, tmp_path_factory):
    """No horizontal scrolling at a phone's width (the page overflowed to 1155 px), the OS's mode, no errors;
    screenshots to look at (``pagecheck.look_at``)."""
    folder = screenshot_folder(tmp_path_factory)
    look = Look("chat-live", f"/chat?id={served.chat_id}", "text=The sum of y is 20.")
    assert look_at(browser, served.dashboard.url, look, folder) == []
    print(f"screenshots in {folder}")
