"""The dashboard's Chat page in a real Chromium, its agents talking to the real small model (see conftest.py)."""

from __future__ import annotations

import time

import pytest

from dsagent.artifacts import Store
from dsagent.settings import Settings
from dsagent.workspace import Workspace

from panel_app.conftest import PageProblems, browser, dsagent_env, serve_dashboard  # noqa: F401 (browser: a fixture)
from .conftest import model_env, record

pytestmark = [pytest.mark.real_model, pytest.mark.timeout(900)]

ENDED = {"succeeded", "failed", "unverified"}


def test_a_turn_on_the_chat_page_ends_with_its_status_shown(model_settings, browser, tmp_path):
    home = tmp_path / "ws"
    # fenced: see tests/real_model/test_agents.py (the chat test)
    env = {**dsagent_env(home), **model_env(model_settings.replace(llm_tool_mode="fenced"), home)}
    env.pop("OPENAI_API_KEY", None)
    data = tmp_path / "sales.csv"
    data.write_text("region,revenue\nNorth,120.5\nSouth,80.25\nEast,99.0\n")
    with serve_dashboard(home, "--no-scheduler", env=env) as dashboard:
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        page = context.new_page()
        page.set_default_timeout(60_000)
        problems = PageProblems(page)
        page.goto(dashboard.url + "chat")
        page.locator("input[type=file]").set_input_files(str(data))
        page.get_by_text("received: sales.csv").wait_for()
        page.get_by_placeholder("e.g. sales q3").fill("sales")
        page.get_by_role("button", name="Create chat").click()
        page.wait_for_url("**/chat?id=*")
        chat_id = int(page.url.split("id=")[1])
        started = time.monotonic()
        box = page.locator("textarea[placeholder^='Ask about the data']")
        box.fill("Which region has the most revenue?")
        box.press("Enter")
        page.get_by_text("Which region has the most revenue?").first.wait_for()
        store = Store(Workspace(home), Settings(home=str(home)))
        store.setup()
        try:
            deadline = time.monotonic() + 500
            while True:
                turns = store.list_runs(parent_id=chat_id, kind="agent", limit=1).items
                if turns and turns[0].status in ENDED:
                    break
                assert time.monotonic() < deadline, "the turn did not end within its budget"
                time.sleep(1)
            turn = turns[0]
        finally:
            store.close()
        seconds = round(time.monotonic() - started, 1)
        page.locator(f"text={turn.status}").first.wait_for()  # the chip shows how it ended
        if turn.status == "unverified":
            page.get_by_text("unverified: the outputs do not support this answer", exact=False).wait_for()
        page.screenshot(path=str(tmp_path / "real-model-chat.png"), full_page=True)
        context.close()
    record("dashboard chat turn", run_id=turn.id, status=turn.status, seconds=seconds,
           screenshot=str(tmp_path / "real-model-chat.png"))
    assert [p for p in problems.items if "favicon" not in p] == []
