"""SQL of schedules and of the scheduler lease (the ``schedules`` and ``scheduler_leases`` tables).

Part of the store: ``Store`` calls these inside its locked sessions and
transactions (``Store.add_schedule``, ``claim_firing``, ``acquire_scheduler_lease``
...). ``runs/scheduler.py`` owns the cron semantics; this module only keeps
rows. Two rules make several scheduler processes safe on one workspace:

- a firing is claimed with a compare-and-set on ``next_fire`` and ``version``
  (``claim_firing``): of two processes that see the same due firing, one wins;
- one process at a time holds the lease (``acquire_scheduler_lease``) and is
  the one that fires; the others wait until it expires or its owner is gone.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Mapping

import duckdb

from dsagent.artifacts.models import Owner, utcnow
from dsagent.artifacts.rows import aware_utc, naive_utc
from dsagent.errors import DsagentError, NotFound

if TYPE_CHECKING:
    from dsagent.artifacts.transaction import Transaction

__all__ = ["Schedule", "SchedulerLease", "SCHEDULE_FIELDS"]

_COLS = ("name, cron, timezone, target, paused, overlap, misfire, notify_url, notify_on, version, created, updated, "
         "next_fire, last_fire, last_run_id, pending")
#: what ``update_schedule`` may change
SCHEDULE_FIELDS = ("cron", "timezone", "target", "paused", "overlap", "misfire", "notify_url", "notify_on")


@dataclass(frozen=True)
class Schedule:
    """A named cron schedule and what it runs (``target``: kind notebook/agent/batch and its inputs)."""

    name: str
    cron: str
    timezone: str
    target: dict[str, Any]
    paused: bool = False
    overlap: str = "skip"  # a firing while the last run still runs: skip it, or queue it
    misfire: str = "run_once"  # firings missed while no scheduler ran: skip, or run once to catch up
    notify_url: str | None = None
    notify_on: str = "failure"  # failure | always
    version: int = 1
    created: datetime | None = None
    updated: datetime | None = None
    next_fire: datetime | None = None  # UTC; None: the scheduler computes it at its next tick
    last_fire: datetime | None = None
    last_run_id: int | None = None
    pending: bool = False  # a queued firing waits for the running one

    def to_json(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in _COLS.split(", ")}
        for key in ("created", "updated", "next_fire", "last_fire"):
            out[key] = out[key].isoformat() if out[key] else None
        return out


@dataclass(frozen=True)
class SchedulerLease:
    """Which process fires the schedules (its ``owner`` id, pid and host) and until when its lease holds."""

    owner: str
    pid: int | None
    host: str | None
    acquired: datetime
    expires: datetime
    started: float | None = field(default=None, repr=False)

    def to_json(self) -> dict[str, Any]:
        return {"owner": self.owner, "pid": self.pid, "host": self.host, "acquired": self.acquired.isoformat(),
                "expires": self.expires.isoformat()}


def _naive(value: datetime | None) -> datetime | None:
    return naive_utc(value) if value is not None else None


def _schedule(row: tuple[Any, ...]) -> Schedule:
    return Schedule(
        name=row[0], cron=row[1], timezone=row[2], target=json.loads(row[3]) if row[3] else {}, paused=bool(row[4]),
        overlap=row[5], misfire=row[6], notify_url=row[7], notify_on=row[8], version=row[9], created=aware_utc(row[10]),
        updated=aware_utc(row[11]), next_fire=aware_utc(row[12]), last_fire=aware_utc(row[13]), last_run_id=row[14], pending=bool(row[15]),
    )


def _get(con: duckdb.DuckDBPyConnection, name: str) -> Schedule:
    row = con.execute(f"SELECT {_COLS} FROM schedules WHERE name = ?", [name]).fetchone()
    if row is None:
        raise NotFound(f"no schedule named {name!r}", hint="`dsagent schedule ls` lists the schedules", what="schedule", id=name)
    return _schedule(row)


def add_schedule(tx: "Transaction", schedule: Schedule) -> Schedule:
    if tx.con.execute("SELECT count(*) FROM schedules WHERE name = ?", [schedule.name]).fetchone()[0]:
        raise DsagentError(f"a schedule named {schedule.name!r} exists already",
                           hint="pick another name, or change it with `dsagent schedule rm` first", reason="exists", name=schedule.name)
    now = _naive(utcnow())
    s = schedule
    tx.con.execute(
        f"INSERT INTO schedules ({_COLS}) VALUES ({', '.join('?' * 16)})",
        [s.name, s.cron, s.timezone, json.dumps(s.target, default=str), s.paused, s.overlap, s.misfire, s.notify_url, s.notify_on,
         1, now, now, None, None, None, False],
    )
    return _get(tx.con, s.name)


def update_schedule(tx: "Transaction", name: str, changes: Mapping[str, Any]) -> Schedule:
    """Change fields; the version goes up, and a new cron, time zone or a resume makes the scheduler compute ``next_fire`` anew."""
    unknown = set(changes) - set(SCHEDULE_FIELDS)
    if unknown:
        raise DsagentError(f"cannot change {', '.join(sorted(unknown))} of a schedule", hint=f"changeable: {', '.join(SCHEDULE_FIELDS)}")
    current = _get(tx.con, name)
    sets = [f"{key} = ?" for key in changes]
    values = [json.dumps(v, default=str) if key == "target" else v for key, v in changes.items()]
    if {"cron", "timezone"} & set(changes) or (changes.get("paused") is False and current.paused):
        sets.append("next_fire = NULL")
    sets += ["version = version + 1", "updated = ?"]
    tx.con.execute(f"UPDATE schedules SET {', '.join(sets)} WHERE name = ?", [*values, _naive(utcnow()), name])
    return _get(tx.con, name)


def delete_schedule(tx: "Transaction", name: str) -> None:
    _get(tx.con, name)
    tx.con.execute("DELETE FROM schedules WHERE name = ?", [name])


def get_schedule(con: duckdb.DuckDBPyConnection, name: str) -> Schedule:
    return _get(con, name)


def list_schedules(con: duckdb.DuckDBPyConnection, limit: int, cursor: str | None) -> list[Schedule]:
    """By name, ``limit`` per page after ``cursor`` (the last name of the previous page)."""
    rows = con.execute(f"SELECT {_COLS} FROM schedules WHERE ? IS NULL OR name > ? ORDER BY name LIMIT ?", [cursor, cursor, limit]).fetchall()
    return [_schedule(r) for r in rows]


def claim_firing(tx: "Transaction", name: str, version: int, expected: datetime | None, next_fire: datetime | None, *,
                 fired: datetime | None, pending: bool | None = None) -> bool:
    """Move ``next_fire`` from ``expected`` to ``next_fire`` if nobody did meanwhile (and the schedule was not edited).

    ``fired``: the firing this claim is for (``last_fire``), None when the claim only computes or skips.
    ``pending``: set the queued-firing flag too. False: another process claimed it first.
    """
    row = tx.con.execute(
        """UPDATE schedules SET next_fire = ?, last_fire = coalesce(?, last_fire), pending = coalesce(?, pending)
           WHERE name = ? AND version = ? AND next_fire IS NOT DISTINCT FROM ? RETURNING name""",
        [_naive(next_fire), _naive(fired), pending, name, version, _naive(expected)],
    ).fetchone()
    return row is not None


def set_last_run(tx: "Transaction", name: str, run_id: int) -> None:
    tx.con.execute("UPDATE schedules SET last_run_id = ? WHERE name = ?", [run_id, name])


def take_pending(tx: "Transaction", name: str, version: int) -> bool:
    """Clear the queued-firing flag if it is set; True if this process took the queued firing."""
    return tx.con.execute("UPDATE schedules SET pending = false WHERE name = ? AND version = ? AND pending RETURNING name",
                          [name, version]).fetchone() is not None


def active_runs(con: duckdb.DuckDBPyConnection, name: str) -> list[int]:
    """Runs of the schedule that are queued or running (batch children are their batch's business)."""
    rows = con.execute("SELECT id FROM runs WHERE schedule_id = ? AND status IN ('queued', 'running') ORDER BY id", [name]).fetchall()
    return [r[0] for r in rows]


def _lease(row: tuple[Any, ...] | None) -> SchedulerLease | None:
    if row is None:
        return None
    return SchedulerLease(row[0], row[1], row[2], aware_utc(row[4]), aware_utc(row[5]), row[3])  # type: ignore[arg-type]


def get_lease(con: duckdb.DuckDBPyConnection) -> SchedulerLease | None:
    return _lease(con.execute("SELECT owner, pid, host, started, acquired, expires FROM scheduler_leases WHERE name = 'scheduler'").fetchone())


def acquire_lease(tx: "Transaction", owner: str, now: datetime, ttl: float) -> SchedulerLease:
    """Take or renew the lease when it is free, ours, expired, or held by a process of this host that is gone; the holder."""
    from datetime import timedelta

    held = get_lease(tx.con)
    mine = Owner.current()
    if held is not None and held.owner != owner:
        gone = Owner(held.pid, held.host, held.started).is_gone() if held.pid is not None and held.host else None
        if held.expires > now and not gone:
            return held
    expires = now + timedelta(seconds=ttl)
    acquired = held.acquired if held is not None and held.owner == owner else now
    tx.con.execute("DELETE FROM scheduler_leases WHERE name = 'scheduler'")
    tx.con.execute("INSERT INTO scheduler_leases VALUES ('scheduler', ?, ?, ?, ?, ?, ?)",
                   [owner, mine.pid, mine.host, mine.started, _naive(acquired), _naive(expires)])
    return SchedulerLease(owner, mine.pid, mine.host, acquired, expires, mine.started)


def release_lease(tx: "Transaction", owner: str) -> None:
    tx.con.execute("DELETE FROM scheduler_leases WHERE name = 'scheduler' AND owner = ?", [owner])
