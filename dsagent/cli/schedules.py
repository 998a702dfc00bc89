"""``dsagent schedule add|ls|rm|pause|resume|run-now`` (cron schedules in the workspace) and ``dsagent scheduler`` (fires them)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("schedule", help="cron schedules of notebooks, agent questions and sweeps (`dsagent scheduler` fires them)")
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)

    add = verbs.add_parser("add", help="add a schedule")
    add.add_argument("name", help="its name (letters, digits, - _ .)")
    add.add_argument("--cron", required=True, help='when: "MIN HOUR DAY MONTH WEEKDAY", e.g. "0 6 * * 1-5" (06:00 on weekdays)')
    what = add.add_mutually_exclusive_group(required=True)
    what.add_argument("--notebook", metavar="NOTEBOOK", help="run this notebook: a path, or the name of one in the notebook folders "
                      "(sales_cohorts; the dashboard's Notebooks page lists them)")
    what.add_argument("--agent", metavar="QUESTION", help="ask the analysis agent this question (with --data)")
    what.add_argument("--batch", metavar="NOTEBOOK", help="run this notebook (a path or a name, as --notebook) as a sweep over --grid")
    add.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"), help="a notebook parameter")
    add.add_argument("--data", action="append", default=[], metavar="FILE", help="a data file for --agent (repeatable)")
    add.add_argument("--grid", metavar="YAML", help="the grid of --batch")
    add.add_argument("--allow-unknown-parameters", action="store_true", help="inject parameters the notebook does not declare, as papermill does (default: an unknown name is an error)")
    add.add_argument("--backend", help="kernel backend (default: the setting)")
    add.add_argument("--timezone", default="UTC", help="time zone the cron expression is read in (IANA name, default UTC)")
    add.add_argument("--overlap", default="skip", choices=("skip", "queue"), help="a firing while the last run still runs (default skip)")
    add.add_argument("--misfire", default="run_once", choices=("skip", "run_once"),
                     help="firings missed while no scheduler ran: skip them, or run once to catch up (default)")
    add.add_argument("--notify-url", metavar="URL", help="webhook that gets a JSON POST when a run fails")
    add.add_argument("--notify-on", default="failure", choices=("failure", "always"), help="POST on failures only (default) or always")
    add.set_defaults(func=cmd_add)

    ls = verbs.add_parser("ls", help="list schedules with their next fire time")
    ls.add_argument("--limit", type=int, default=50)
    ls.add_argument("--cursor", help="next_cursor of the previous page")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=cmd_ls)

    for verb, helptext in (("rm", "delete a schedule (its runs stay)"), ("pause", "stop firing a schedule"),
                           ("resume", "fire a paused schedule again (from its next cron time)"), ("run-now", "fire a schedule now, here")):
        v = verbs.add_parser(verb, help=helptext)
        v.add_argument("name")
        if verb == "run-now":  # the dashboard's Run now, when it fires no schedules itself, says who asked
            v.add_argument("--launched-by", help=argparse.SUPPRESS)
        v.set_defaults(func=cmd_change, verb=verb)

    s = sub.add_parser("scheduler", help="fire the workspace's schedules until stopped (Ctrl-C/SIGTERM); one process at a time fires")
    s.set_defaults(func=cmd_scheduler)


def cmd_add(args: argparse.Namespace) -> int:
    from dsagent.artifacts.store import Store
    from dsagent.runs.schedule_spec import describe_cron, make_schedule, next_fire_after

    schedule = make_schedule(
        args.name, args.cron, notebook=args.notebook, text_parameters=dict(args.parameter), agent=args.agent, data=args.data,
        batch=args.batch, grid=args.grid, backend=args.backend, timezone=args.timezone, overlap=args.overlap, misfire=args.misfire,
        notify_url=args.notify_url, notify_on=args.notify_on, allow_unknown_parameters=args.allow_unknown_parameters,
    )
    with Store.open() as store:
        saved = store.add_schedule(schedule)
    from dsagent.artifacts.models import utcnow

    upcoming = next_fire_after(saved.cron, saved.timezone, utcnow())
    print(f"schedule {saved.name}: {describe_cron(saved.cron)} ({saved.timezone}); next {upcoming.isoformat()}")
    print("it fires while a scheduler runs: dsagent scheduler", file=sys.stderr)
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    from dsagent.artifacts.store import Store
    from dsagent.runs.schedule_spec import schedule_rows

    with Store.open() as store:
        rows, cursor = schedule_rows(store, limit=args.limit, cursor=args.cursor)
        holder = store.scheduler_lease()
    if args.json:
        print(json.dumps({"schedules": rows, "next_cursor": cursor, "scheduler": holder.to_json() if holder else None}))
        return 0
    if not rows:
        print("no schedules (dsagent schedule add NAME --cron ... --notebook ...)")
        return 0
    for r in rows:
        state = "paused" if r["paused"] else f"next {r['next_fire_local']}"
        last = f"; last run {r['last_run_id']} {r['last_status']}" if r["last_run_id"] else ""
        print(f"{r['name']}  [{r['cron']}] {r['cron_words']} ({r['timezone']})  {state}{last}\n    {r['target']}")
    if cursor:
        print(f"more: dsagent schedule ls --cursor {cursor}")
    print(_holder_line(holder), file=sys.stderr)
    return 0


def _holder_line(holder: Any) -> str:
    from dsagent.artifacts.models import utcnow

    if holder is None or holder.expires < utcnow():
        return "no scheduler is running (start one: dsagent scheduler)"
    return f"fired by {holder.owner} (pid {holder.pid} on {holder.host})"


def cmd_change(args: argparse.Namespace) -> int:
    from dsagent.artifacts.store import Store

    with Store.open() as store:
        if args.verb == "rm":
            store.delete_schedule(args.name)
            print(f"schedule {args.name} deleted")
        elif args.verb in ("pause", "resume"):
            store.update_schedule(args.name, paused=args.verb == "pause")
            print(f"schedule {args.name} {args.verb}d")
        else:
            return _run_now(store, args.name, getattr(args, "launched_by", None))
    return 0


def _run_now(store: Any, name: str, launched_by: str | None = None) -> int:
    import asyncio

    from dsagent.errors import DsagentError
    from dsagent.runs.scheduler import fire_schedule
    from dsagent.settings import Settings

    schedule = store.get_schedule(name)
    active = store.active_schedule_runs(name)
    if active and schedule.overlap == "skip":
        raise DsagentError(f"schedule {name} has run {active[0]} still running", hint="wait for it, or set --overlap queue",
                           reason="busy")
    who = {"user": launched_by, "via": "dashboard"} if launched_by else None
    run = asyncio.run(fire_schedule(schedule, store, Settings(), launched_by=who))
    if run is None:
        print(f"schedule {name}: no run started (see the log above)", file=sys.stderr)
        return 1
    print(f"schedule {name}: run {run.id} {run.status}")
    return 0 if run.status == "succeeded" else 1


def cmd_scheduler(args: argparse.Namespace) -> int:
    import asyncio
    import logging
    import signal

    from dsagent.artifacts.recorder import CALLER_HANDLES_SIGTERM
    from dsagent.runs.scheduler import Scheduler

    logging.getLogger("dsagent.scheduler").setLevel(logging.INFO)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    logging.getLogger("dsagent.scheduler").addHandler(handler)

    async def main() -> None:
        scheduler = Scheduler()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        # firings' recorders leave SIGTERM to us; scheduler.stop() cancels them (their runs end cancelled)
        CALLER_HANDLES_SIGTERM.set(True)
        await scheduler.start()
        print(f"scheduler {scheduler.owner} (pid {__import__('os').getpid()}) started; Ctrl-C stops it", file=sys.stderr, flush=True)
        try:
            await stop.wait()
        finally:
            await scheduler.stop()
        print("scheduler stopped", file=sys.stderr)

    asyncio.run(main())
    return 0
