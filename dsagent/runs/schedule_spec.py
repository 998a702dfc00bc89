"""What a schedule is made of, checked before it is stored: its cron expression, time zone and target.

Cron expressions are read by croniter (five fields, or six with seconds last,
croniter's convention) and put into words by cron-descriptor; this module only
says which field is wrong. Targets: a notebook (path, parameters, backend), an
agent question (data files, backend) or a batch sweep (notebook, grid file).
``schedule_rows`` is the listing ``dsagent schedule ls`` prints and the
dashboard shows (cron in words, next and last fire time, last status).
"""

from __future__ import annotations

from datetime import datetime, timezone as dt_timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from dsagent.errors import DsagentError

if TYPE_CHECKING:
    from dsagent.artifacts.schedules import Schedule
    from dsagent.artifacts.store import Store

__all__ = ["check_cron", "describe_cron", "next_fire_after", "check_timezone", "make_schedule", "schedule_rows", "OVERLAP", "MISFIRE"]

_FIELDS = ("minute", "hour", "day of month", "month", "day of week", "second")
_NEUTRAL = ("0", "0", "1", "1", "*", "0")  # a valid value per field, to test one field at a time
OVERLAP = ("skip", "queue")
MISFIRE = ("skip", "run_once")
NOTIFY_ON = ("failure", "always")


def _bad_cron(expr: str, why: str) -> DsagentError:
    return DsagentError(f"invalid cron expression {expr!r}: {why}",
                        hint="five fields: minute hour day-of-month month day-of-week, e.g. \"0 6 * * 1-5\" (06:00 on weekdays); "
                        "a sixth field counts seconds", reason="bad_cron", cron=expr)


def check_cron(expr: str) -> str:
    """The expression, normalised; ``DsagentError`` naming the wrong field otherwise."""
    from croniter import croniter

    fields = expr.split()
    if len(fields) not in (5, 6):
        raise _bad_cron(expr, f"it has {len(fields)} field{'s' if len(fields) != 1 else ''}, a cron expression has 5 (or 6 with seconds)")
    for index, value in enumerate(fields):
        probe = list(_NEUTRAL[: len(fields)])
        probe[index] = value
        try:
            croniter(" ".join(probe))
        except (ValueError, KeyError) as exc:
            raise _bad_cron(expr, f"the {_FIELDS[index]} field {value!r} is not valid ({exc})") from None
    try:
        croniter(" ".join(fields))
    except (ValueError, KeyError) as exc:
        raise _bad_cron(expr, str(exc)) from None
    return " ".join(fields)


def describe_cron(expr: str) -> str:
    """The expression in words ("At 06:00 AM, Monday through Friday")."""
    from cron_descriptor import get_description

    fields = expr.split()
    if len(fields) == 6:  # cron-descriptor reads seconds first, croniter last
        fields = [fields[5], *fields[:5]]
    try:
        return str(get_description(" ".join(fields)))
    except Exception:  # a valid croniter expression cron-descriptor cannot word
        return expr


def check_timezone(name: str) -> str:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise DsagentError(f"unknown time zone {name!r}", hint="use an IANA name such as UTC, Europe/Berlin or America/New_York",
                           reason="bad_timezone", timezone=name) from None
    return name


def next_fire_after(expr: str, tz: str, after: datetime) -> datetime:
    """The first firing strictly after ``after``, in UTC (computed in the schedule's time zone, so DST is right)."""
    from zoneinfo import ZoneInfo

    from croniter import croniter

    local = after.astimezone(ZoneInfo(tz))
    return croniter(expr, local).get_next(datetime).astimezone(dt_timezone.utc)


def make_schedule(
    name: str,
    cron: str,
    *,
    notebook: str | Path | None = None,
    parameters: Mapping[str, Any] | None = None,
    text_parameters: Mapping[str, str] | None = None,
    agent: str | None = None,
    data: Sequence[str | Path] = (),
    batch: str | Path | None = None,
    grid: str | Path | None = None,
    backend: str | None = None,
    timezone: str = "UTC",
    overlap: str = "skip",
    misfire: str = "run_once",
    notify_url: str | None = None,
    notify_on: str = "failure",
    allow_unknown_parameters: bool = False,
) -> "Schedule":
    """A checked ``Schedule`` (not stored yet): exactly one of notebook, agent, batch; paths made absolute."""
    from dsagent.artifacts.schedules import Schedule

    if not name or not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise DsagentError(f"bad schedule name {name!r}", hint="use letters, digits, '-', '_' or '.'", reason="bad_name")
    chosen = [k for k, v in (("notebook", notebook), ("agent", agent), ("batch", batch)) if v]
    if len(chosen) != 1:
        raise DsagentError("a schedule runs one thing: give exactly one of --notebook, --agent, --batch",
                           hint='e.g. --notebook report.ipynb, --agent "QUESTION" --data sales.csv, or --batch sweep.ipynb --grid grid.yaml',
                           reason="bad_target")
    _choice("overlap", overlap, OVERLAP)
    _choice("misfire", misfire, MISFIRE)
    _choice("notify-on", notify_on, NOTIFY_ON)
    cron, timezone = check_cron(cron), check_timezone(timezone)  # the cheap checks first
    target = _target(chosen[0], notebook or batch, parameters, text_parameters, agent, data, grid, backend)
    if allow_unknown_parameters and target["kind"] != "agent":
        target["allow_unknown_parameters"] = True
    elif target["kind"] != "agent":
        _check_names(target)
    return Schedule(name=name, cron=cron, timezone=timezone, target=target, overlap=overlap,
                    misfire=misfire, notify_url=notify_url or None, notify_on=notify_on)


def _choice(what: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise DsagentError(f"--{what} {value!r} is not one of {', '.join(allowed)}", hint=f"use one of: {', '.join(allowed)}")


def _target(kind: str, path: str | Path | None, parameters: Mapping[str, Any] | None, text_parameters: Mapping[str, str] | None,
            question: str | None, data: Sequence[str | Path], grid: str | Path | None, backend: str | None) -> dict[str, Any]:
    from dsagent.runs.notebook_input import peek_notebook
    from dsagent.runs.notebook_library import resolve_notebook

    target: dict[str, Any] = {"kind": kind, "backend": backend}
    if kind == "agent":
        files = [str(Path(d).expanduser().resolve()) for d in data]
        missing = [f for f in files if not Path(f).is_file()]
        if missing:
            raise DsagentError(f"data file {missing[0]} does not exist", hint="pass existing files with --data", reason="bad_data")
        return {**target, "question": question, "data": files}
    notebook = resolve_notebook(path)  # a path, or a notebook's name in the library (as the Schedules page picks one)
    peek_notebook(notebook)
    target["notebook"] = str(notebook)
    if kind == "batch":
        if not grid:
            raise DsagentError("--batch needs --grid FILE", hint="the grid of parameters the sweep runs", reason="bad_target")
        from dsagent.runs.batch import load_grid

        grid_path = Path(grid).expanduser().resolve()
        load_grid(grid_path)  # readable and not empty now; read again at each firing (edits count)
        return {**target, "grid": str(grid_path)}
    return {**target, "parameters": dict(parameters or {}), "text_parameters": dict(text_parameters or {})}


def _check_names(target: Mapping[str, Any]) -> None:
    """A schedule's parameter names (or its grid's) must be the notebook's: a typo fails now, not at 6 am."""
    from dsagent.runs.batch import load_grid
    from dsagent.runs.notebook_input import notebook_parameters, unknown_parameters_error

    notebook = Path(target["notebook"])
    sets = load_grid(target["grid"]) if target["kind"] == "batch" else [{**target["parameters"], **target["text_parameters"]}]
    names = list(dict.fromkeys(name for s in sets for name in s))
    if names:
        declared = [p["name"] for p in notebook_parameters(notebook)]
        unknown = [n for n in names if n not in declared]
        if unknown:
            raise unknown_parameters_error(notebook, unknown, declared)


def describe_target(target: Mapping[str, Any]) -> str:
    kind = target.get("kind")
    if kind == "agent":
        return f"agent: {str(target.get('question'))[:60]}"
    if kind == "batch":
        return f"batch {Path(str(target.get('notebook'))).name} x {Path(str(target.get('grid'))).name}"
    params = {**target.get("parameters", {}), **target.get("text_parameters", {})}
    extra = " " + " ".join(f"{k}={v}" for k, v in params.items()) if params else ""
    return f"notebook {Path(str(target.get('notebook'))).name}{extra}"


def schedule_rows(store: "Store", now: datetime | None = None, *, limit: int = 50, cursor: str | None = None) -> tuple[list[dict[str, Any]], str | None]:
    """One page of schedules as rows for people: cron in words, next fire (computed if not stored yet), last run and status."""
    from zoneinfo import ZoneInfo

    from dsagent.artifacts.models import utcnow

    now = now or utcnow()
    page = store.list_schedules(limit=limit, cursor=cursor)
    rows = []
    for s in page.items:
        upcoming = None if s.paused else (s.next_fire or next_fire_after(s.cron, s.timezone, now))
        last_status, last_fire = None, s.last_fire
        if s.last_run_id is not None:
            try:
                last_run = store.get_run(s.last_run_id)
            except DsagentError:
                last_status = "deleted"
            else:
                last_status = last_run.status
                # its run is the last firing too: a run now (dashboard, `schedule run-now`) claims no cron time, so
                # the schedule's own last_fire is only its last cron firing
                last_fire = max(filter(None, (last_fire, last_run.created)))
        local = upcoming.astimezone(ZoneInfo(s.timezone)) if upcoming else None
        rows.append({
            "name": s.name, "cron": s.cron, "cron_words": describe_cron(s.cron), "timezone": s.timezone,
            "next_fire": upcoming.isoformat() if upcoming else None, "next_fire_local": local.strftime("%Y-%m-%d %H:%M:%S %Z") if local else None,
            "last_fire": last_fire.isoformat() if last_fire else None, "last_run_id": s.last_run_id, "last_status": last_status,
            "paused": s.paused, "target": describe_target(s.target), "overlap": s.overlap, "misfire": s.misfire,
        })
    return rows, page.next_cursor

