"""The Schedules page's pieces that need no browser: cron feedback, times in words, who fires, Run now without a scheduler,
the form (a notebook from the list, its parameters as the notebook page's form), a schedule's block, the listing's last firing."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import nbformat
import pytest

from dsagent.artifacts.schedules import SchedulerLease
from dsagent.artifacts.store import Store
from dsagent.errors import DsagentError
from dsagent.panel_app.overview import scheduler_text
from dsagent.panel_app.schedule_form import cron_feedback, relative_time
from dsagent.panel_app.schedules_page import run_now_elsewhere
from dsagent.runs.schedule_spec import make_schedule
from dsagent.settings import Settings

NOW = datetime(2026, 3, 2, 10, 0, tzinfo=timezone.utc)


def test_cron_feedback_names_the_wrong_field_and_words_a_good_one():
    ok, text = cron_feedback("0 6 * * 1-5", "UTC", NOW)
    assert ok and text == "At 06:00 AM, Monday through Friday — next 2026-03-03 06:00 UTC (in 20 h 0 min)"
    ok, text = cron_feedback("0 6 * 13 *", "UTC", NOW)
    assert not ok and "the month field '13'" in text
    assert "has 2 fields" in cron_feedback("0 6", "UTC", NOW)[1]
    ok, text = cron_feedback("0 6 * * *", "Mars/Base", NOW)
    assert not ok and "unknown time zone 'Mars/Base'" in text


def test_times_in_words():
    assert relative_time(NOW + timedelta(seconds=90), NOW) == "in 1 min"
    assert relative_time(NOW - timedelta(seconds=12), NOW) == "under a minute ago"  # no seconds: the list stays put
    assert relative_time(NOW - timedelta(hours=2, minutes=5), NOW) == "2 h 5 min ago"
    assert relative_time(NOW + timedelta(days=3), NOW) == "in 3 days"


def test_who_fires_the_schedules_comes_from_the_lease():
    me = socket.gethostname()
    later = datetime.now(timezone.utc) + timedelta(minutes=5)
    alive = SchedulerLease("dashboard-abc", os.getpid(), me, NOW, later)
    assert scheduler_text(alive, "dashboard-abc").startswith(f"this dashboard (pid {os.getpid()} on {me})")
    assert "another dashboard" in scheduler_text(alive, "dashboard-other")
    assert "a <code>dsagent scheduler</code> process" in scheduler_text(SchedulerLease("scheduler-1", os.getpid(), me, NOW, later), None)
    for lease in (None, SchedulerLease("scheduler-1", os.getpid(), me, NOW, NOW),  # expired
                  SchedulerLease("scheduler-1", 2**22 + 7, me, NOW, later)):  # its process is gone
        text = scheduler_text(lease, None)
        assert "nobody — schedules will not fire" in text and "dsagent scheduler" in text


def test_run_now_without_a_scheduler_runs_it_in_a_process_of_its_own(workspace_home, tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell("print('hi')")]
    nbformat.write(nb, tmp_path / "hi.ipynb")
    settings = Settings(home=str(workspace_home))
    with Store.open(settings=settings) as store:
        store.add_schedule(make_schedule("hi", "0 6 * * *", notebook=tmp_path / "hi.ipynb"))
        ctx = SimpleNamespace(home=store.workspace.home)
        assert "dsagent schedule run-now" in run_now_elsewhere(ctx, "hi", "alice")
        deadline = time.monotonic() + 90
        run = None
        while time.monotonic() < deadline:
            runs = [r for r in store.list_runs().items if r.schedule_id == "hi" and r.done]
            if runs:
                run = runs[0]
                break
            time.sleep(0.2)
        assert run is not None and run.status == "succeeded", (ctx.home / "run-now.log").read_text()
        launched = [e.payload for e in store.events(run.id) if e.type == "launched"]
        assert launched == [{"user": "alice", "via": "dashboard", "schedule": "hi"}]
        assert run.owner_pid != os.getpid()


def _write_notebook(path, source: str):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    params = nbformat.v4.new_code_cell(source)
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params]
    nbformat.write(nb, path)
    return path


async def _until(condition, timeout: float = 10.0) -> None:
    for _ in range(int(timeout / 0.05)):
        if condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the form never got there")


def test_the_form_picks_notebooks_from_the_list_with_their_parameter_form_and_edits_round_trip(tmp_path):
    from dsagent.panel_app.schedule_form import ScheduleForm, _set

    home = tmp_path / "ws"
    (home / "notebooks").mkdir(parents=True)
    fit = _write_notebook(home / "notebooks" / "fit.ipynb", "alpha = 0.1\nn = 2  # how many")
    (tmp_path / "data.csv").write_text("x\n1\n")
    (tmp_path / "grid.yaml").write_text("alpha: [0.1, 0.2]\n")

    async def read(fn, *args, **kwargs):
        return await asyncio.to_thread(fn, *args, **kwargs)

    async def scenario() -> None:
        form = ScheduleForm(SimpleNamespace(home=home, settings=Settings(home=str(home)), read=read))
        await form.load_notebooks()  # the Notebooks page's list: the workspace's first, then the shipped ones
        labels = list(form.notebook_input.options)
        assert labels[0] == "fit.ipynb · uploaded / saved from a chat" and "sales_cohorts.ipynb · shipped (notebooks)" in labels
        form.cron_input.value_input = "0 9 * * 1"  # typed, not yet committed with Enter: counts
        _set(form.name_input, "fit-daily")
        form.notebook_input.value = str(fit)
        await _until(lambda: form.parameters is not None)
        assert [f.name for f in form.parameters.fields] == ["alpha", "n"]
        n = form.parameters.fields[1].widget
        n.value_input = "3.7"  # the notebook page's own checks: a wrong value turns Save off and says why under the box
        assert not form.check() and form.save_button.disabled and n.error_state and "'3.7' is not a whole number" in n.helper_text
        n.value_input = "5"
        assert form.check() and not form.save_button.disabled
        notebook = form.build()  # only what differs from the notebook's defaults is kept
        assert notebook.target["notebook"] == str(fit) and notebook.target["parameters"] == {"n": 5}

        _set(form.name_input, "ask")
        form.kind = "agent"
        _set(form.question_input, "Which x is largest?")
        _set(form.data_input, str(tmp_path / "data.csv"))
        agent = form.build()
        assert agent.target == {"kind": "agent", "backend": None, "question": "Which x is largest?", "data": [str(tmp_path / "data.csv")]}
        _set(form.name_input, "sweep")
        form.kind = "batch"
        _set(form.grid_input, str(tmp_path / "grid.yaml"))
        batch = form.build()
        assert batch.target["kind"] == "batch" and batch.target["notebook"] == str(fit)

        form.reset()
        form.notebook_input.value = None
        await _until(lambda: form.parameters is None)
        form.load(notebook)  # edit: the fields show the stored schedule, its parameters in its notebook's form
        await _until(lambda: form.parameters is not None)
        assert form.name_input.disabled and form.parameter_area.visible and not form.grid_input.visible
        assert form.parameters.fields[1].widget.value_input == "5"
        assert (form.build().target, form.build().cron) == (notebook.target, "0 9 * * 1")
        form.load(agent)
        assert form.question_input.visible and not form.parameter_area.visible and form.build().target == agent.target
        form.load(batch)
        assert form.grid_input.visible and form.build().target == batch.target
        form.cron_input.value_input = "0 9 * * 8"
        assert not form.check() and form.save_button.disabled and "day of week field '8'" in form.cron_input.helper_text
        with pytest.raises(DsagentError, match="no notebook chosen"):
            form.notebook_input.value = None
            form.kind = "notebook"
            form.cron_input.value_input = "0 9 * * 1"
            form.build()

    asyncio.run(scenario())


def test_a_schedule_block_words_its_firings_and_escapes_what_the_store_holds():
    from dsagent.panel_app.schedule_list import schedule_html

    row = {"name": "<b>x</b>", "cron": "0 6 * * 1-5", "cron_words": "At 06:00 AM, Monday through Friday", "timezone": "UTC",
           "next_fire": (NOW + timedelta(hours=2)).isoformat(), "next_fire_local": "2026-03-02 12:00:00 UTC", "last_fire": None,
           "last_run_id": None, "last_status": None, "paused": False, "target": "notebook <img src=x onerror=alert(1)>.ipynb"}
    html = schedule_html(row, NOW)
    assert "<b>x</b>" not in html and "&lt;b&gt;x&lt;/b&gt;" in html and "<img" not in html
    assert ">in 2 h 0 min</time>" in html and "title='2026-03-02 12:00:00 UTC'" in html and "never fired yet" in html
    assert "firing now" in schedule_html(row, NOW, firing=True)
    fired = {**row, "last_fire": (NOW - timedelta(minutes=3)).isoformat(), "last_run_id": 7, "last_status": "failed"}
    html = schedule_html(fired, NOW)
    assert "ds-chip-failed" in html and "<a href=\"./run?id=7\">7</a>" in html and ">3 min ago</time>" in html
    assert "paused: resume it" in schedule_html({**row, "paused": True, "next_fire": None}, NOW)


def test_the_last_firing_of_a_schedule_run_by_hand_is_its_run(workspace_home, tmp_path):
    """A run now claims no cron time (the schedule's last_fire stays empty): the listing's last firing is its run's."""
    from dsagent.runs.schedule_spec import schedule_rows

    notebook = _write_notebook(tmp_path / "hi.ipynb", "n = 1")
    with Store.open(settings=Settings(home=str(workspace_home))) as store:
        store.add_schedule(make_schedule("hi", "0 6 * * *", notebook=notebook))
        (row,), _ = schedule_rows(store, NOW)
        assert row["last_fire"] is None and row["last_run_id"] is None
        run = store.create_run("notebook", title="hi.ipynb", schedule_id="hi")
        store.set_schedule_last_run("hi", run.id)  # what a firing does once its run exists
        (row,), _ = schedule_rows(store, NOW)
        assert row["last_run_id"] == run.id and row["last_status"] == "running"
        assert row["last_fire"] == run.created.isoformat()
