"""How the dashboard writes numbers and times in tables and panes: durations, sizes, relative times.

Plain functions of their values (no Panel), so every page and test writes them the same way::

    duration(3723.4)            -> "1 h 02 min"
    size(1536)                  -> "1.5 KB"
    time_cell(run.created, now) -> '<time datetime="2026-11-25T00:47:00+00:00" title="2026-11-25 00:47:00 UTC">3 min ago</time>'

Relative times are computed against ``now`` rounded down to the minute by the caller's refresh
(``minute_now``), so a table whose rows did not change sends nothing new within the same minute.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dsagent.artifacts.models import Run

__all__ = ["duration", "run_duration", "size", "exact_time", "relative_time", "time_cell", "minute_now"]


def duration(seconds: float | None) -> str:
    """A length of time as people read it: "850 ms", "12.3 s", "4 min 05 s", "2 h 03 min", "3 d 4 h"."""
    if seconds is None:
        return ""
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    whole = int(seconds)
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    if whole < 86400:
        return f"{whole // 3600} h {whole % 3600 // 60:02d} min"
    return f"{whole // 86400} d {whole % 86400 // 3600} h"


def run_duration(run: "Run") -> str:
    """How long a run took; "…" while it runs, nothing before it started."""
    if run.started is None:
        return ""
    if run.finished is None:
        return "…"
    return duration((run.finished - run.started).total_seconds())


def size(size_bytes: int | None) -> str:
    """A byte count: "512 B", "1.5 KB", "3.2 MB", "1.1 GB"."""
    if size_bytes is None:
        return ""
    value = float(size_bytes)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return ""


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)


def exact_time(value: datetime | None) -> str:
    """The exact time, in UTC: "2026-11-25 00:47:00 UTC"."""
    return _aware(value).astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC") if value else ""


def minute_now() -> datetime:
    """Now, rounded down to the minute: what relative times are measured against."""
    return datetime.now(timezone.utc).replace(second=0, microsecond=0)


def relative_time(value: datetime | None, now: datetime | None = None) -> str:
    """"just now", "5 min ago", "3 h ago", "yesterday", "12 days ago", then the date."""
    if value is None:
        return ""
    now = now or minute_now()
    seconds = (now - _aware(value)).total_seconds()
    if seconds < 60:
        return "just now"
    if seconds < 3600:
        return f"{int(seconds // 60)} min ago"
    if seconds < 86400:
        return f"{int(seconds // 3600)} h ago"
    if seconds < 2 * 86400:
        return "yesterday"
    if seconds < 30 * 86400:
        return f"{int(seconds // 86400)} days ago"
    return _aware(value).astimezone(timezone.utc).strftime("%Y-%m-%d")


def time_cell(value: datetime | None, now: datetime | None = None) -> str:
    """A relative time with the exact time on hover (HTML; the values are dates, never text from data)."""
    if value is None:
        return ""
    return f'<time datetime="{_aware(value).isoformat()}" title="{exact_time(value)}">{relative_time(value, now)}</time>'
