"""The Schedules page's pieces that need no browser: cron feedback, times in words, who fires, Run now without a scheduler."""

from __future__ import annotations

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
from dsagent.panel_app.schedules_page import _run_now_elsewhere, _text_parameters, cron_feedback, relative_time
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


def test_times_and_parameters_in_words():
    assert relative_time(NOW + timedelta(seconds=90), NOW) == "in 1 min"
    assert relative_time(NOW - timedelta(seconds=12), NOW) == "under a minute ago"  # no seconds: the list stays put
    assert relative_time(NOW - timedelta(hours=2, minutes=5), NOW) == "2 h 5 min ago"
    assert relative_time(NOW + timedelta(days=3), NOW) == "in 3 days"
    assert _text_parameters("n = 3\n# a comment\nregion: eu\n") == {"n": "3", "region": "eu"}
    with pytest.raises(DsagentError, match="line 1"):
        _text_parameters("just words")


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
        assert "dsagent schedule run-now" in _run_now_elsewhere(ctx, "hi", "alice")
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


def test_the_form_makes_agent_and_batch_schedules_and_edits_round_trip(tmp_path):
    from dsagent.panel_app.schedules_page import _Form, _set

    (tmp_path / "notebooks").mkdir()
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    params = nbformat.v4.new_code_cell("alpha = 0.1")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params]
    nbformat.write(nb, tmp_path / "notebooks" / "fit.ipynb")
    (tmp_path / "data.csv").write_text("x\n1\n")
    (tmp_path / "grid.yaml").write_text("alpha: [0.1, 0.2]\n")
    form = _Form(SimpleNamespace(home=tmp_path))
    form.cron.value_input = "0 9 * * 1"  # typed, not yet committed with Enter: counts
    _set(form.name, "ask")
    form.kind.value = "agent"
    _set(form.question, "Which x is largest?")
    _set(form.data, str(tmp_path / "data.csv"))
    agent = form.build()
    assert agent.target == {"kind": "agent", "backend": None, "question": "Which x is largest?", "data": [str(tmp_path / "data.csv")]}
    _set(form.name, "sweep")
    form.kind.value = "batch"
    _set(form.notebook, "fit.ipynb")  # a bare name: the workspace's notebooks/
    _set(form.grid, str(tmp_path / "grid.yaml"))
    batch = form.build()
    assert batch.target["kind"] == "batch" and batch.target["notebook"] == str(tmp_path / "notebooks" / "fit.ipynb")
    form.load(agent)  # edit: the fields show the stored schedule (typed text before is replaced) and build the same one
    assert form.name.disabled and form.question.visible and not form.grid.visible
    assert (form.build().target, form.build().cron) == (agent.target, "0 9 * * 1")
    form.load(batch)
    assert form.grid.visible and form.build().target == batch.target
    form.cron.value_input = "0 9 * * 8"
    form.check()
    assert not form.check() and form.save.disabled and "day of week field &#x27;8&#x27;" in form.cron_help.object
