"""Schedules: cron semantics with a controllable clock (no test waits for a real minute), webhooks, the lease."""

from __future__ import annotations

import json
import threading
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from notebook_helpers import write_notebook

from dsagent.artifacts.store import Store
from dsagent.errors import DsagentError
from dsagent.runs.schedule_spec import check_cron, describe_cron, make_schedule, next_fire_after, schedule_rows
from dsagent.runs.scheduler import Scheduler

T0 = datetime(2026, 3, 2, 10, 0, 30, tzinfo=timezone.utc)  # a Monday


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def store(settings):
    with Store.open(settings=settings) as s:
        yield s


@pytest.fixture
def quick_nb(tmp_path: Path) -> Path:
    return write_notebook(tmp_path / "quick.ipynb", "print('hello', n)", params="n = 1")


def test_cron_and_timezone_errors_name_the_problem():
    with pytest.raises(DsagentError, match="the hour field '25'"):
        check_cron("0 25 * * *")
    with pytest.raises(DsagentError, match="the day of week field 'funday'"):
        check_cron("0 6 * * funday")
    with pytest.raises(DsagentError, match="has 3 fields"):
        check_cron("0 6 *")
    with pytest.raises(DsagentError, match="unknown time zone 'Mars/Base'"):
        make_schedule("x", "0 6 * * *", notebook="whatever.ipynb", timezone="Mars/Base")
    assert describe_cron("0 6 * * 1-5") == "At 06:00 AM, Monday through Friday"
    # read in the schedule's zone: 06:00 in Berlin is 05:00 UTC in winter, 04:00 in summer
    assert next_fire_after("0 6 * * *", "Europe/Berlin", T0) == datetime(2026, 3, 3, 5, 0, tzinfo=timezone.utc)
    assert next_fire_after("0 6 * * *", "Europe/Berlin", T0 + timedelta(days=30)).hour == 4


def test_targets_are_checked_when_the_schedule_is_made(quick_nb, tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text("n: [1, 2]\n")
    batch = make_schedule("sweep", "0 * * * *", batch=quick_nb, grid=grid)
    assert batch.target == {"kind": "batch", "backend": None, "notebook": str(quick_nb), "grid": str(grid)}
    agent = make_schedule("ask", "0 * * * *", agent="Which month sold most?", data=[quick_nb])
    assert agent.target["kind"] == "agent" and agent.target["data"] == [str(quick_nb)]
    with pytest.raises(DsagentError, match="data file .* does not exist"):
        make_schedule("ask", "0 * * * *", agent="q", data=[tmp_path / "missing.csv"])
    with pytest.raises(DsagentError, match="exactly one of --notebook, --agent, --batch"):
        make_schedule("two", "0 * * * *", notebook=quick_nb, agent="q")
    with pytest.raises(DsagentError, match="no parameter 'm'"):
        make_schedule("p", "0 * * * *", notebook=quick_nb, text_parameters={"m": "1"})
    # a sweep's grid too; --allow-unknown-parameters keeps them (and the firing injects them, as papermill does)
    grid.write_text("nn: [1, 2]\n")
    with pytest.raises(DsagentError, match=r"no parameter 'nn' \(did you mean 'n'\?\); its parameters: n"):
        make_schedule("sweep", "0 * * * *", batch=quick_nb, grid=grid)
    allowed = make_schedule("p", "0 * * * *", notebook=quick_nb, text_parameters={"m": "1"}, allow_unknown_parameters=True)
    assert allowed.target["allow_unknown_parameters"] is True


async def test_fires_on_time_as_a_normal_run_and_edits_count_without_restart(store, settings, quick_nb):
    store.add_schedule(make_schedule("every5", "*/5 * * * *", notebook=quick_nb, text_parameters={"n": "7"}))
    clock = Clock(T0)
    scheduler = Scheduler(settings, store=store, clock=clock)
    assert await scheduler.tick() == []  # computes the next firing
    assert store.get_schedule("every5").next_fire == datetime(2026, 3, 2, 10, 5, tzinfo=timezone.utc)
    assert scheduler.is_firing and store.scheduler_lease().owner == scheduler.owner

    clock.now = datetime(2026, 3, 2, 10, 5, 1, tzinfo=timezone.utc)
    fired = await scheduler.tick()
    assert [f.schedule for f in fired] == ["every5"]
    (run,) = await scheduler.wait_idle()
    assert (run.kind, run.status, run.schedule_id, run.params) == ("notebook", "succeeded", "every5", {"n": 7})
    kinds = {a.kind for a in store.list_artifacts(run_id=run.id).items}
    assert "notebook" in kinds
    assert [e.payload["fire_time"] for e in store.events(run.id) if e.type == "schedule_fired"] == ["2026-03-02T10:05:00+00:00"]
    assert await scheduler.tick() == []  # the same firing never twice
    row = schedule_rows(store, clock.now)[0][0]
    assert (row["last_run_id"], row["last_status"], row["next_fire"]) == (run.id, "succeeded", "2026-03-02T10:10:00+00:00")

    store.update_schedule("every5", cron="0 12 * * *")  # an edit: the next tick reads it
    await scheduler.tick()
    assert store.get_schedule("every5").next_fire == datetime(2026, 3, 2, 12, 0, tzinfo=timezone.utc)
    store.update_schedule("every5", paused=True)
    clock.now = datetime(2026, 3, 2, 12, 0, 5, tzinfo=timezone.utc)
    assert await scheduler.tick() == []
    await scheduler.stop()


@pytest.mark.parametrize("policy", ["skip", "queue"])
async def test_never_two_runs_of_one_schedule_at_once(store, settings, quick_nb, policy):
    store.add_schedule(make_schedule("busy", "*/5 * * * *", notebook=quick_nb, overlap=policy))
    clock = Clock(T0)
    scheduler = Scheduler(settings, store=store, clock=clock)
    await scheduler.tick()
    running = store.create_run("notebook", schedule_id="busy")  # a run of this schedule still going (this process owns it)
    clock.now = datetime(2026, 3, 2, 10, 5, 2, tzinfo=timezone.utc)
    assert await scheduler.tick() == []
    assert store.get_schedule("busy").pending is (policy == "queue")
    assert store.get_schedule("busy").next_fire == datetime(2026, 3, 2, 10, 10, tzinfo=timezone.utc)
    store.update_run_status(running.id, "succeeded")
    fired = await scheduler.tick()
    assert len(fired) == (1 if policy == "queue" else 0)  # the queued firing starts once the last run ended
    runs = await scheduler.wait_idle()
    assert all(r.status == "succeeded" for r in runs)
    await scheduler.stop()


@pytest.mark.parametrize("misfire, expected_runs", [("skip", 0), ("run_once", 1)])
async def test_missed_firings_after_downtime_follow_the_misfire_policy(store, settings, quick_nb, misfire, expected_runs):
    store.add_schedule(make_schedule("hourly", "0 * * * *", notebook=quick_nb, misfire=misfire))
    first = Scheduler(settings, store=store, clock=Clock(T0))
    await first.tick()
    await first.stop()  # the scheduler goes down for five hours; a new one starts (the schedule survives the restart)
    later = Clock(datetime(2026, 3, 2, 15, 20, tzinfo=timezone.utc))
    second = Scheduler(settings, store=store, clock=later)
    fired = await second.tick()
    assert len(fired) == expected_runs  # five missed firings: none, or one to catch up
    await second.wait_idle()
    assert store.get_schedule("hourly").next_fire == datetime(2026, 3, 2, 16, 0, tzinfo=timezone.utc)
    assert len([r for r in store.list_runs(kind="notebook").items if r.schedule_id == "hourly"]) == expected_runs
    await second.stop()


async def test_only_the_lease_holder_fires(store, settings, quick_nb):
    store.add_schedule(make_schedule("one", "* * * * *", notebook=quick_nb))
    clock = Clock(T0)
    a, b = Scheduler(settings, store=store, clock=clock), Scheduler(settings, store=store, clock=clock)
    await a.tick()
    await b.tick()
    assert a.is_firing and not b.is_firing and b.holder.owner == a.owner
    clock.now = T0 + timedelta(seconds=settings.scheduler_lease_seconds + 1)  # a stops renewing: its lease runs out
    await b.tick()
    assert b.is_firing
    await b.stop()
    assert store.scheduler_lease() is None


class _Hook(BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


async def test_a_failed_firing_posts_to_the_webhook(store, settings, tmp_path, caplog):
    failing = write_notebook(tmp_path / "fails.ipynb", "1/0")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Hook.received = []
    try:
        url = f"http://127.0.0.1:{server.server_port}/hook"
        store.add_schedule(make_schedule("hooked", "* * * * *", notebook=failing, notify_url=url))
        store.add_schedule(make_schedule("quiet", "* * * * *", notebook=failing))
        clock = Clock(T0)
        scheduler = Scheduler(settings, store=store, clock=clock)
        await scheduler.tick()
        clock.now = T0 + timedelta(seconds=31)
        with caplog.at_level("ERROR", logger="dsagent.scheduler"):
            assert len(await scheduler.tick()) == 2
            runs = {r.schedule_id: r for r in await scheduler.wait_idle()}
        await scheduler.stop()
    finally:
        server.shutdown()
    run = runs["hooked"]
    assert _Hook.received == [{"schedule": "hooked", "run_id": run.id, "status": "failed", "error": run.error,
                               "link": f"dsagent runs show {run.id}"}]
    assert "ZeroDivisionError" in run.error
    assert f"schedule quiet: run {runs['quiet'].id} failed" in caplog.text  # no webhook: a clear log line


def test_schedule_cli_add_ls_run_now_pause_rm(workspace_home, quick_nb):
    from notebook_helpers import run_cli

    added = run_cli(workspace_home, "schedule", "add", "daily", "--cron", "30 7 * * *", "--notebook", str(quick_nb), "-p", "n", "5")
    assert added.returncode == 0, added.stderr
    assert "At 07:30 AM" in added.stdout
    typo = run_cli(workspace_home, "schedule", "add", "x", "--cron", "0 6 * * *", "--notebook", str(quick_nb), "-p", "m", "5")
    assert typo.returncode == 2 and "no parameter 'm'; its parameters: n" in typo.stderr and "--allow-unknown-parameters" in typo.stderr
    bad = run_cli(workspace_home, "schedule", "add", "x", "--cron", "0 6 * 13 *", "--notebook", str(quick_nb))
    assert bad.returncode == 2 and "the month field '13'" in bad.stderr
    now = run_cli(workspace_home, "schedule", "run-now", "daily")
    assert now.returncode == 0 and "succeeded" in now.stdout, now.stderr
    assert run_cli(workspace_home, "schedule", "pause", "daily").returncode == 0
    listing = json.loads(run_cli(workspace_home, "schedule", "ls", "--json").stdout)
    (row,) = listing["schedules"]
    assert (row["paused"], row["last_status"], row["next_fire"], row["cron_words"]) == (True, "succeeded", None, "At 07:30 AM")
    assert listing["scheduler"] is None
    assert run_cli(workspace_home, "schedule", "rm", "daily").returncode == 0
    gone = run_cli(workspace_home, "schedule", "rm", "daily")
    assert gone.returncode == 2 and "no schedule named 'daily'" in gone.stderr


async def test_a_scheduled_agent_question_fires_as_an_agent_run(store, settings, tmp_path, monkeypatch):
    """An ``--agent`` schedule fired at its time: the analysis agent against the scripted OpenAI-compatible server."""
    from datetime import timedelta

    from dsagent.testing.llm_server import LLMServer, Reply, ToolCall

    data = tmp_path / "points.csv"
    data.write_text("x,y\n1,2\n2,4\n3,5\n4,9\n")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    script = [
        Reply("1. Mean of x"),
        Reply(tool_calls=[ToolCall("run_code", {"code": "df = load_table(data)\nprint('mean x:', df['x'].mean())"})]),
        Reply("The mean of x is 2.5."),
        Reply('{"verdict": "accept", "findings": []}', role="reviewer"),
    ]
    store.add_schedule(make_schedule("ask-daily", "0 11 * * *", agent="What is the mean of x?", data=[data]))
    clock = Clock(T0)
    with LLMServer(script) as llm:
        agent_settings = settings.replace(llm_base_url=llm.base_url, llm_model="scripted-model", agent_backend="local",
                                          llm_backoff_initial=0.01, llm_backoff_max=0.05, llm_timeout=10.0)
        scheduler = Scheduler(agent_settings, store=store, clock=clock)
        await scheduler.tick()
        clock.now = T0 + timedelta(hours=1)  # 11:00:30, inside the misfire grace
        assert [f.schedule for f in await scheduler.tick()] == ["ask-daily"]
        (run,) = await scheduler.wait_idle()
        await scheduler.stop()
        llm.assert_consumed()
        question = llm.requests[0].messages[-1]["content"]
    assert (run.kind, run.status, run.schedule_id) == ("agent", "succeeded", "ask-daily"), run.error
    assert "What is the mean of x?" in question
    types = [e.type for e in store.events(run.id)]
    assert "schedule_fired" in types and "agent_answer" in types
    assert "notebook" in {a.kind for a in store.list_artifacts(run_id=run.id).items}
