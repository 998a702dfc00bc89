"""Run and artifact commands: ``runs ls/show/events``, ``artifacts ls/show/get/export``, ``gc``.

With ``--json`` every listing prints one JSON object per line with stable
field names (``id``, ``run_id``, ``kind``, ``mime``, ``name``, ``size``,
``sha256``, ``created``, ...), for scripts.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

if TYPE_CHECKING:
    from dsagent.artifacts.store import Store

__all__ = ["register", "parse_age", "parse_since"]

_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_age(text: str) -> timedelta:
    """``30d``, ``12h``, ``15m``, ``45s``, ``2w`` -> a timedelta."""
    from dsagent.errors import DsagentError

    match = _AGE.match(text)
    if not match:
        raise DsagentError(f"cannot read the age {text!r}", hint="write a number and a unit: 45s, 15m, 12h, 30d, 2w")
    return timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2)])


def parse_since(text: str) -> datetime:
    """An age (``2h`` = two hours ago) or an ISO date/time (UTC if no zone is given)."""
    from dsagent.errors import DsagentError

    if _AGE.match(text):
        return datetime.now(timezone.utc) - parse_age(text)
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise DsagentError(f"cannot read the time {text!r}", hint="use an age like 2h or 7d, or a date like 2026-11-01") from None
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def register(sub: argparse._SubParsersAction) -> None:
    runs = sub.add_parser("runs", help="list runs, show one, follow its events").add_subparsers(dest="runs_command", metavar="ACTION", required=True)
    p = runs.add_parser("ls", help="runs, newest first")
    p.add_argument("--kind", help="agent, notebook, batch, batch-child or exec")
    p.add_argument("--status", help="queued, running, succeeded, failed, unverified or cancelled")
    _listing_args(p)
    p.set_defaults(func=cmd_runs_ls)
    p = runs.add_parser("show", help="one run with its artifact count")
    p.add_argument("run", type=int)
    p.add_argument("--json", action="store_true", help="one JSON object")
    p.set_defaults(func=cmd_runs_show)
    p = runs.add_parser("events", help="a run's events (status, cells, outputs)")
    p.add_argument("run", type=int)
    p.add_argument("--after", type=int, default=0, help="only events with a sequence number above this")
    p.add_argument("--follow", action="store_true", help="keep printing new events until the run ends")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=cmd_runs_events)

    arts = sub.add_parser("artifacts", help="list, show, download and export artifacts").add_subparsers(dest="artifacts_command", metavar="ACTION", required=True)
    p = arts.add_parser("ls", help="artifacts, newest first")
    p.add_argument("--run", type=int, help="only this run's artifacts")
    p.add_argument("--kind", help="image, table, html, json, text, file or notebook")
    p.add_argument("--name", help="a glob (*.png) or a part of the name")
    _listing_args(p)
    p.set_defaults(func=cmd_artifacts_ls)
    p = arts.add_parser("show", help="an artifact's metadata")
    p.add_argument("id", type=int)
    p.add_argument("--json", action="store_true", help="one JSON object")
    p.set_defaults(func=cmd_artifacts_show)
    p = arts.add_parser("get", help="an artifact's exact bytes")
    p.add_argument("id", type=int)
    p.add_argument("-o", "--output", required=True, help="file to write ('-' for stdout)")
    p.set_defaults(func=cmd_artifacts_get)
    p = arts.add_parser("export", help="all artifacts of a run, with a manifest.json")
    p.add_argument("run", type=int)
    p.add_argument("-o", "--output", required=True, help="a folder, or a path ending in .zip")
    p.set_defaults(func=cmd_artifacts_export)

    p = sub.add_parser("gc", help="delete old finished runs and the bytes only they used; shrink the database file")
    p.add_argument("--older-than", required=True, help="age of runs to delete: 30d, 12h, 2w ...")
    p.add_argument("--dry-run", action="store_true", help="only say what would be deleted")
    p.add_argument("--json", action="store_true", help="one JSON object")
    p.set_defaults(func=cmd_gc)


def _listing_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--since", help="created after this: an age (2h, 7d) or an ISO date")
    p.add_argument("--limit", type=int, default=50, help="items per page (default 50)")
    p.add_argument("--cursor", help="continue after the previous page (its last line says the cursor)")
    p.add_argument("--json", action="store_true", help="one JSON object per line")


def _open() -> "Store":
    from dsagent.artifacts.store import Store

    store = Store()
    store.setup()
    return store


def _print_json(rows: Iterable[dict[str, Any]]) -> None:
    for row in rows:
        print(json.dumps(row), flush=True)


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _when(value: datetime | None) -> str:
    return value.astimezone().strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def _more(next_cursor: str | None, as_json: bool) -> None:
    if next_cursor and not as_json:
        print(f"(more: --cursor {next_cursor})")
    elif next_cursor:
        print(f"next cursor: {next_cursor}", file=sys.stderr)


def cmd_runs_ls(args: argparse.Namespace) -> int:
    store = _open()
    since = parse_since(args.since) if args.since else None
    page = store.list_runs(kind=args.kind, status=args.status, since=since, limit=args.limit, cursor=args.cursor)
    if args.json:
        _print_json(r.to_json() for r in page.items)
    else:
        if not page.items:
            print("no runs yet (`dsagent exec 'print(1)'` records one)")
        for r in page.items:
            print(f"{r.id:>6}  {r.status:<9}  {r.kind:<11}  {_when(r.created)}  {r.title or ''}")
    _more(page.next_cursor, args.json)
    return 0


def cmd_runs_show(args: argparse.Namespace) -> int:
    store = _open()
    run = store.get_run(args.run)
    artifacts = store.artifact_count(run.id)
    if args.json:
        _print_json([{**run.to_json(), "artifacts": artifacts}])
        return 0
    for key, value in run.to_json().items():
        if key not in ("run_id", "params") and value is not None:
            print(f"{key:>12}: {value}")
    print(f"{'params':>12}: {json.dumps(run.params)[:500]}")
    print(f"{'artifacts':>12}: {artifacts}" + (f"  (dsagent artifacts ls --run {run.id})" if artifacts else ""))
    return 0


def _event_line(event: Any) -> str:
    payload = dict(event.payload)
    text = payload.pop("text", None) or payload.pop("code", None)
    detail = " ".join(f"{k}={v}" for k, v in payload.items())
    line = f"{event.seq:>5}  {_when(event.time)}  {event.type:<14} {detail}"
    if text:
        line += "\n       " + str(text).rstrip().replace("\n", "\n       ")
    return line


def cmd_runs_events(args: argparse.Namespace) -> int:
    store = _open()
    store.get_run(args.run)
    events = store.follow_events(args.run, after=args.after) if args.follow else store.events(args.run, after=args.after)
    for event in events:
        print(json.dumps(event.to_json()) if args.json else _event_line(event), flush=True)
    return 0


def cmd_artifacts_ls(args: argparse.Namespace) -> int:
    store = _open()
    since = parse_since(args.since) if args.since else None
    page = store.list_artifacts(run_id=args.run, kind=args.kind, name=args.name, since=since, limit=args.limit, cursor=args.cursor)
    if args.json:
        _print_json(a.to_json() for a in page.items)
    else:
        if not page.items:
            print("no artifacts match")
        for a in page.items:
            print(f"{a.id:>7}  run {a.run_id:<5}  {a.kind:<8}  {_size(a.size):>10}  {a.name}")
    _more(page.next_cursor, args.json)
    return 0


def cmd_artifacts_show(args: argparse.Namespace) -> int:
    artifact = _open().get_artifact(args.id)
    if args.json:
        _print_json([artifact.to_json()])
        return 0
    for key, value in artifact.to_json().items():
        print(f"{key:>9}: {value}")
    return 0


def cmd_artifacts_get(args: argparse.Namespace) -> int:
    from dsagent.errors import DsagentError

    data = _open().read_bytes(args.id)
    if args.output == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
        return 0
    try:
        Path(args.output).write_bytes(data)
    except OSError as exc:
        raise DsagentError(f"cannot write {args.output}: {exc.strerror}", hint="pick a writable path") from exc
    print(f"wrote {len(data)} bytes to {args.output}", file=sys.stderr)
    return 0


def cmd_artifacts_export(args: argparse.Namespace) -> int:
    from dsagent.artifacts.export import export_run

    target = export_run(_open(), args.run, args.output)
    print(f"exported run {args.run} to {target} (see manifest.json)")
    return 0


def cmd_gc(args: argparse.Namespace) -> int:
    report = _open().gc(parse_age(args.older_than), dry_run=args.dry_run)
    if args.json:
        _print_json([report.to_json()])
        return 0
    verb = "would delete" if report.dry_run else "deleted"
    print(f"{verb} {report.runs} runs, {report.events} events, {report.artifacts} artifacts, "
          f"{report.blobs} blobs ({_size(report.blob_bytes)}), {report.files_removed} loose blob files"
          + (f", {report.orphans_removed} orphaned blobs of interrupted writes" if report.orphans_removed else ""))
    if not report.dry_run:
        print(f"database file: {_size(report.db_bytes_before)} -> {_size(report.db_bytes_after)}")
    return 0
