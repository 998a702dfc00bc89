"""Rows of the workspace database <-> the typed values of ``models.py``, shared by every query module.

The column lists here are the order every ``SELECT`` of runs and artifacts
uses, so one conversion function serves them all. Times are stored as naive
UTC ``TIMESTAMP`` values (``TIMESTAMPTZ`` would make DuckDB's Python client
need pytz); ``naive_utc`` and ``aware_utc`` convert at the boundary.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

from dsagent.artifacts.models import Artifact, Run

__all__ = ["RUN_COLUMNS", "ARTIFACT_COLUMNS", "BLOB_WHERE_COLUMNS", "naive_utc", "aware_utc", "run_from_row", "artifact_from_row"]

RUN_COLUMNS = "id, kind, status, title, params, backend, parent_id, schedule_id, created, started, finished, error, owner_pid, owner_host"
ARTIFACT_COLUMNS = "id, run_id, cell, name, kind, mime, size, sha256, created, tags, metadata"
#: where a blob's bytes are, selected from ``blobs b`` joined to an artifact (read by ``Store.blob_bytes``)
BLOB_WHERE_COLUMNS = "b.shard, b.pack, b.pack_offset, b.sha256 IS NOT NULL"


def naive_utc(value: datetime) -> datetime:
    """``value`` as the naive UTC time the database stores (naive values are taken as UTC already)."""
    return value.astimezone(timezone.utc).replace(tzinfo=None) if value.tzinfo else value


def aware_utc(value: datetime | None) -> datetime | None:
    """A stored (naive UTC) time as a timezone-aware one; None stays None."""
    return value.replace(tzinfo=timezone.utc) if value is not None else None


def run_from_row(row: tuple[Any, ...]) -> Run:
    """A ``Run`` from a row selected with ``RUN_COLUMNS``."""
    return Run(
        id=row[0], kind=row[1], status=row[2], title=row[3], params=json.loads(row[4]) if row[4] else {},
        backend=row[5], parent_id=row[6], schedule_id=row[7], created=aware_utc(row[8]), started=aware_utc(row[9]),
        finished=aware_utc(row[10]), error=row[11], owner_pid=row[12], owner_host=row[13],
    )


def artifact_from_row(row: tuple[Any, ...]) -> Artifact:
    """An ``Artifact`` from a row selected with ``ARTIFACT_COLUMNS``."""
    metadata = row[10]
    return Artifact(
        id=row[0], run_id=row[1], cell=row[2], name=row[3], kind=row[4], mime=row[5], size=row[6], sha256=row[7],
        created=aware_utc(row[8]), tags=tuple(row[9] or ()),
        metadata=json.loads(metadata) if isinstance(metadata, str) else dict(metadata or {}),
    )
