"""The Overview page: runs by status and kind, what is running, the latest runs and images, store size."""

from __future__ import annotations

from typing import TYPE_CHECKING

import panel as pn

from dsagent.panel_app import untrusted
from dsagent.panel_app.widgets import html_pane, image_tile, Notice, Poller, preloaded, current_user, duration_text, human_size, page_frame, run_link, status_badge, time_text

if TYPE_CHECKING:
    from dsagent.panel_app.context import AppContext

__all__ = ["page", "preload"]


def _store_size(ctx: "AppContext") -> int:
    home = ctx.home
    return sum(p.stat().st_size for p in home.glob("dsagent*.duckdb*") if p.is_file())


def scheduler_text(lease, own_owner: str | None) -> str:
    """Who fires the schedules, from the lease: this dashboard, a ``dsagent scheduler`` process, or nobody (and the fix)."""
    from dsagent.artifacts.models import Owner, utcnow
    from dsagent.panel_app.scheduler_thread import OWNER_PREFIX

    gone = lease is not None and lease.pid is not None and lease.host and Owner(lease.pid, lease.host, lease.started).is_gone()
    if lease is None or lease.expires < utcnow() or gone:
        fix = ("this dashboard's scheduler is starting or waiting for the store" if own_owner else
               "start one with <code>dsagent scheduler</code>, or restart <code>dsagent serve</code> without <code>--no-scheduler</code>")
        return f"<b style='color:#dc3545'>nobody — schedules will not fire</b>; {fix}"
    where = untrusted.text(f"pid {lease.pid} on {lease.host}")
    if own_owner and lease.owner == own_owner:
        who = "this dashboard"
    elif lease.owner.startswith(OWNER_PREFIX):
        who = "another dashboard (<code>dsagent serve</code>)"
    else:
        who = "a <code>dsagent scheduler</code> process"
    return f"{who} ({where})"


def _runs_table(runs) -> str:
    rows = "".join(
        f"<tr><td>{run_link(r.id)}</td><td>{untrusted.text(r.kind)}</td><td>{status_badge(r.status)}</td>"
        f"<td>{untrusted.text(r.title or '')}</td><td>{time_text(r.started or r.created)}</td><td>{duration_text(r)}</td></tr>"
        for r in runs
    )
    return ("<table class='ds-kv'><tr><th>run</th><th>kind</th><th>status</th><th>title</th><th>started</th><th>duration</th></tr>"
            f"{rows}</table>") if rows else "<i>no runs yet</i>"


def preload(ctx: "AppContext", args: dict[str, str]) -> dict:
    """Everything the page shows (blocking store reads; the page's first data and each refresh)."""
    return {"summary": ctx.store.overview(), "recent": ctx.store.search_runs(limit=10),
            "pictures": ctx.store.search_artifacts(kind="image", limit=8), "size": _store_size(ctx),
            "firing": scheduler_text(ctx.store.scheduler_lease(), ctx.scheduler.owner if ctx.scheduler is not None else None)}  # reads /proc


def page(ctx: "AppContext") -> pn.Column:
    notice = Notice()
    counts = html_pane("loading…")
    running = html_pane("")
    latest = html_pane("")
    images = html_pane("")

    async def refresh() -> None:
        async def work() -> None:
            show(await ctx.read(preload, ctx, {}))
        await notice.guard(work)

    def show(data: dict) -> None:
        summary, recent, pictures, size = data["summary"], data["recent"], data["pictures"], data["size"]
        by_status = " ".join(f"{status_badge(s)} {n}" for s, n in sorted(summary["runs_by_status"].items()))
        by_kind = ", ".join(f"{untrusted.text(k)}: {n}" for k, n in sorted(summary["runs_by_kind"].items()))
        arts = ", ".join(f"{untrusted.text(k)}: {n}" for k, n in sorted(summary["artifacts_by_kind"].items()))
        counts.object = (f"<table class='ds-kv'><tr><td><b>runs</b></td><td>{recent.total} — {by_status or 'none yet'}</td></tr>"
                         f"<tr><td><b>by kind</b></td><td>{by_kind or '—'}</td></tr>"
                         f"<tr><td><b>artifacts</b></td><td>{arts or '—'}</td></tr>"
                         f"<tr><td><b>store</b></td><td>{human_size(size)} in {untrusted.text(str(ctx.home))}</td></tr>"
                         f"<tr><td><b>schedules fired by</b></td><td><span class='ds-scheduler'>{data['firing']}</span> · "
                         f"<a href='./schedules'>schedules</a></td></tr></table>")
        running.object = "<h3>Running now</h3>" + (_runs_table(summary["running"]) if summary["running"] else "<i>nothing is running</i>")
        latest.object = "<h3>Latest runs</h3>" + _runs_table(recent.items)
        tiles = "".join(image_tile(a, f"{a.name[:40]} · run {a.run_id}") for a in pictures.items)
        images.object = "<h3>Latest images</h3>" + (tiles or "<i>no images yet</i>")

    first = preloaded()
    if first is not None:  # the counts are in the document the browser receives
        show(first)
    Poller(refresh, max(2000, ctx.poll_ms * 4), first=first is None)
    return page_frame("/", "Overview", notice.pane, counts, running, latest, images, user=current_user())
