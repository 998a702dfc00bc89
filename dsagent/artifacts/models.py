"""Typed rows of the workspace database: runs, events, artifacts, pages of them.

These are plain values; ``store.py`` reads and writes them. ``to_json()``
gives the stable field names the CLI prints with ``--json`` and the dashboard
serves, so scripts can rely on them.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Generic, Mapping, TypeVar

from dsagent.artifacts import schema

__all__ = ["Run", "Event", "Artifact", "NewArtifact", "Page", "GcReport", "Owner", "utcnow", "iso_or_none"]

T = TypeVar("T")


def utcnow() -> datetime:
    """Now, timezone-aware UTC (what every time field of these rows holds)."""
    return datetime.now(timezone.utc)


def iso_or_none(value: datetime | None) -> str | None:
    """ISO 8601 text of a time, or None (how ``to_json()`` writes times)."""
    return value.isoformat() if value else None


@dataclass(frozen=True)
class Owner:
    """The process that runs a run: pid, host and process start time (pids get reused)."""

    pid: int
    host: str
    started: float | None

    @classmethod
    def current(cls) -> "Owner":
        return cls(os.getpid(), socket.gethostname(), process_start_time(os.getpid()))

    def is_gone(self) -> bool | None:
        """True if this owner process has ended; None if it runs on another host (cannot tell)."""
        if self.host != socket.gethostname():
            return None
        started = process_start_time(self.pid)
        if started is None:
            return True
        # the pid is alive but may belong to a newer process that reused it
        return self.started is not None and abs(started - self.started) > 1.0


def process_start_time(pid: int) -> float | None:
    """Start time (epoch seconds) of a live process, or None if there is none with that pid."""
    import psutil

    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return None
        return process.create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


@dataclass(frozen=True)
class Run:
    """One unit of work: an agent conversation, a notebook run, a batch (child), an exec."""

    id: int
    kind: str
    status: str
    title: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    backend: str | None = None
    parent_id: int | None = None
    schedule_id: str | None = None
    created: datetime | None = None
    started: datetime | None = None
    finished: datetime | None = None
    error: str | None = None
    owner_pid: int | None = None
    owner_host: str | None = None

    @property
    def done(self) -> bool:
        return self.status in schema.TERMINAL_STATUSES

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "run_id": self.id,
            "kind": self.kind,
            "status": self.status,
            "title": self.title,
            "params": self.params,
            "backend": self.backend,
            "parent_id": self.parent_id,
            "schedule_id": self.schedule_id,
            "created": iso_or_none(self.created),
            "started": iso_or_none(self.started),
            "finished": iso_or_none(self.finished),
            "error": self.error,
            "owner_pid": self.owner_pid,
            "owner_host": self.owner_host,
        }


@dataclass(frozen=True)
class Event:
    """One append-only progress record of a run; ``seq`` counts from 1 per run."""

    run_id: int
    seq: int
    time: datetime
    type: str
    payload: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "seq": self.seq, "time": iso_or_none(self.time), "type": self.type, "payload": self.payload}


@dataclass(frozen=True)
class Artifact:
    """Metadata of one captured output or file; its bytes come from ``Store.read_bytes(id)``."""

    id: int
    run_id: int
    cell: int | None
    name: str
    kind: str
    mime: str
    size: int
    sha256: str
    created: datetime
    tags: tuple[str, ...] = ()
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "run_id": self.run_id,
            "kind": self.kind,
            "mime": self.mime,
            "name": self.name,
            "size": self.size,
            "sha256": self.sha256,
            "created": iso_or_none(self.created),
            "cell": self.cell,
            "tags": list(self.tags),
            "metadata": self.metadata,
        }


@dataclass
class NewArtifact:
    """An artifact to add: its bytes plus what describes them (see ``schema.ARTIFACT_KINDS``)."""

    name: str
    kind: str
    mime: str
    data: bytes
    cell: int | None = None
    tags: tuple[str, ...] = ()
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a listing; pass ``next_cursor`` back to get the next (None: no more)."""

    items: list[T]
    next_cursor: str | None


@dataclass(frozen=True)
class GcReport:
    """What ``Store.gc`` deleted (or would delete, with ``dry_run``) and the file sizes."""

    dry_run: bool
    runs: int
    events: int
    artifacts: int
    blobs: int
    blob_bytes: int
    files_removed: int
    db_bytes_before: int
    db_bytes_after: int
    orphans_removed: int = 0  # inline bytes written by transactions that never committed (killed writers)

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)
