"""The Overview page: runs by status and kind, what is running, the latest runs and images, store size."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import panel as pn
import param

from dsagent.panel_app import formats, untrusted
from dsagent.panel_app.components import card, empty_state, status_chip
from dsagent.panel_app.layout import page_frame
from dsagent.panel_app.widgets import Notice, Poller, current_user, html_pane, image_tile, preloaded, run_link

if TYPE_CHECKING:
    from dsagent.artifacts.models import Run
    from dsagent.panel_app.context import AppContext

__all__ = ["OverviewView", "page", "preload", "scheduler_text"]

_STATUS_ORDER = ("running", "queued", "idle", "failed", "unverified", "cancelled", "succeeded")
_CSS = """
.ds-stats {display: grid; grid-template-columns: repeat(auto-fit, minmax(230px, 1fr)); gap: 12px}
.ds-stat {border: 1px solid var(--ds-border); border-radius: 8px; padding: 10px 14px; background: var(--ds-surface, #fff);
  min-width: 0; overflow-wrap: anywhere}
.ds-stat h2 {font-size: 0.8rem; font-weight: 500; letter-spacing: 0.04em; text-transform: uppercase; color: var(--ds-muted); margin: 0 0 6px 0}
.ds-stat .ds-big {font-size: 1.8rem; font-weight: 500; line-height: 1.2}
.ds-chips {display: flex; flex-wrap: wrap; gap: 6px; margin-top: 6px}
.ds-chips a {text-decoration: none}
.ds-runs {border-collapse: collapse; width: 100%; min-width: 560px}
.ds-runs th {text-align: left; font-weight: 500; color: var(--ds-muted); font-size: 0.85rem; padding: 4px 8px;
  border-bottom: 1px solid var(--ds-border)}
.ds-runs td {padding: 5px 8px; border-bottom: 1px solid var(--ds-border); vertical-align: middle}
.ds-runs td.ds-title {overflow-wrap: anywhere; max-width: 420px}
"""


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
        return f"<b style='color:var(--ds-failed)'>nobody — schedules will not fire</b>; {fix}"
    where = untrusted.text(f"pid {lease.pid} on {lease.host}")
    if own_owner and lease.owner == own_owner:
        who = "this dashboard"
    elif lease.owner.startswith(OWNER_PREFIX):
        who = "another dashboard (<code>dsagent serve</code>)"
    else:
        who = "a <code>dsagent scheduler</code> process"
    return f"{who} ({where})"


def runs_table(runs: "list[Run]", now=None) -> str:
    """A short list of runs as an HTML table (it scrolls sideways inside its card on a phone)."""
    now = now or formats.minute_now()
    rows = "".join(
        f"<tr><td>{run_link(r.id)}</td><td>{status_chip(r.status)}</td><td class='ds-title'>{untrusted.text(r.title or '')}</td>"
        f"<td>{untrusted.text(r.kind)}</td><td>{formats.time_cell(r.started or r.created, now)}</td><td>{formats.run_duration(r)}</td></tr>"
        for r in runs)
    return ("<div class='ds-scroll'><table class='ds-runs'><tr><th>run</th><th>status</th><th>title</th><th>kind</th><th>started</th>"
            f"<th>duration</th></tr>{rows}</table></div>")


def preload(ctx: "AppContext", args: dict[str, str]) -> dict:
    """Everything the page shows (blocking store reads; the page's first data and each refresh)."""
    return {"summary": ctx.store.overview(), "recent": ctx.store.search_runs(limit=10),
            "pictures": ctx.store.search_artifacts(kind="image", limit=8), "size": _store_size(ctx),
            "firing": scheduler_text(ctx.store.scheduler_lease(), ctx.scheduler.owner if ctx.scheduler is not None else None)}  # reads /proc


class OverviewView(pn.viewable.Viewer):
    """The Overview's state is the last read (``data``); ``_render`` shows it whenever it changes."""

    data = param.Dict(default=None, allow_None=True, doc="what preload read: summary, recent runs, pictures, size, firing")

    def __init__(self, ctx: "AppContext", first: dict | None = None, **params: Any) -> None:
        super().__init__(**params)
        self.ctx = ctx
        self._shown_at = formats.minute_now()
        self.notice = Notice()
        self.counts = html_pane(stylesheets=[_CSS], margin=(6, 0))
        self.running = html_pane(stylesheets=[_CSS])
        self.latest = html_pane(stylesheets=[_CSS])
        self.images = html_pane()
        if first is not None:  # the counts are in the document the browser receives
            self.data = first
        else:
            self._render()
        Poller(self.refresh, max(2000, ctx.poll_ms * 4), first=first is None)

    def __panel__(self) -> Any:
        return page_frame("/", "Overview", self.notice.pane, self.counts, card(self.running, title="Running now"),
                          card(self.latest, title="Latest runs"), card(self.images, title="Latest images"), user=current_user())

    async def refresh(self) -> None:
        async def work() -> None:
            data = await self.ctx.read(preload, self.ctx, {})
            if data != self.data:
                self.data = data
            elif formats.minute_now() != self._shown_at:  # the same runs, but "3 min ago" is now "4 min ago"
                self._render()
        await self.notice.guard(work)

    @param.depends("data", watch=True)
    def _render(self) -> None:
        if self.data is None:
            from dsagent.panel_app.components import loading_placeholder

            self.counts.object = loading_placeholder(3)
            return
        now = self._shown_at = formats.minute_now()
        self.counts.object = self._stats()
        running = self.data["summary"]["running"]
        self.running.object = runs_table(running, now) if running else empty_state(
            "Nothing is running", "Runs appear here while they work; a chat shows here only while it answers.")
        recent = self.data["recent"].items
        self.latest.object = (runs_table(recent, now) + "<p><a href='./runs'>All runs →</a></p>") if recent else empty_state(
            "No runs yet", "Start one: <code>dsagent run notebooks/sales_cohorts.ipynb</code>, or open "
            "<a href='./notebooks'>Notebooks</a> and press Run.")
        tiles = "".join(image_tile(a, f"{a.name[:40]} · run {a.run_id}") for a in self.data["pictures"].items)
        self.images.object = tiles or empty_state("No images yet", "Plots a run makes show here and on the <a href='./artifacts'>Artifacts</a> page.")

    def _stats(self) -> str:
        summary, data = self.data["summary"], self.data
        by_status = summary["runs_by_status"]
        chips = "".join(f"<a href='./runs?status={quote(s)}' title='the {s} runs'>{status_chip(s)} {by_status[s]}</a>"
                        for s in sorted(by_status, key=lambda s: _STATUS_ORDER.index(s) if s in _STATUS_ORDER else 99))
        kinds = "".join(f"<a href='./runs?kind={quote(k)}'>{untrusted.text(k)}: {n}</a>" for k, n in sorted(summary["runs_by_kind"].items()))
        artifacts = ", ".join(f"{untrusted.text(k)}: {n}" for k, n in sorted(summary["artifacts_by_kind"].items()))
        total_artifacts = sum(summary["artifacts_by_kind"].values())
        return (
            "<div class='ds-stats'>"
            f"<div class='ds-stat'><h2>Runs</h2><div class='ds-big'>{data['recent'].total}</div><div class='ds-chips'>{chips}</div></div>"
            f"<div class='ds-stat'><h2>By kind</h2><div class='ds-chips'>{kinds or '—'}</div></div>"
            f"<div class='ds-stat'><h2>Artifacts</h2><div class='ds-big'>{total_artifacts}</div><div class='ds-muted'>{artifacts or '—'}</div></div>"
            f"<div class='ds-stat'><h2>Store</h2><div class='ds-big'>{formats.size(data['size'])}</div>"
            f"<div class='ds-muted'>{untrusted.text(str(self.ctx.home))}</div>"
            f"<div>schedules fired by <span class='ds-scheduler'>{data['firing']}</span> · <a href='./schedules'>schedules</a></div></div>"
            "</div>")


def page(ctx: "AppContext") -> Any:
    return OverviewView(ctx, preloaded())
