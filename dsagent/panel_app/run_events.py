"""A run's events on its page: a timeline, newest first, one window of ``EVENTS_PAGE`` events at a time.

A run can write thousands of events (each output of each cell is one), so the page never holds them all. Seqs
count 1, 2, 3 ... per run, so a window is a seq range: one indexed read (``Store.events(after=, limit=)``),
whatever the run's length, and ``Store.event_outline`` says how many there are without reading them.

On the newest window the page follows the run: each poll reads only the events after the newest one read and
puts them on top in an HTML pane of their own. The panes already there are left alone, so an event a reader
unfolded stays unfolded (a pane's whole content is replaced when it changes). The oldest pane falls off the bottom
once the newer ones hold a window (so the list holds one to two windows); past ``MAX_CHUNKS`` panes the middle ones
are merged into one. Older windows stay put while the
run goes on (the pager counts the newer events); *Newest* goes back to following.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import panel as pn
import param

from dsagent.panel_app.components import card, empty_state, loading_placeholder, timeline
from dsagent.panel_app.widgets import html_pane

if TYPE_CHECKING:
    from dsagent.artifacts.models import Event
    from dsagent.artifacts.run_queries import EventOutline
    from dsagent.panel_app.context import AppContext

__all__ = ["EVENTS_PAGE", "MAX_CHUNKS", "EventsView", "is_action", "first_window"]

EVENTS_PAGE = 100  # events in one window: a timeline of 100 folded items renders in a few ms
MAX_CHUNKS = 12  # panes of a followed window before the oldest are merged (each pane is a model and a shadow root)


def is_action(event: "Event") -> bool:
    """An event a person took from the dashboard (launched, cancel asked ...): it names the user."""
    payload = event.payload or {}
    return payload.get("via") == "dashboard" and "user" in payload


def first_window(store: Any, run_id: int) -> tuple["EventOutline", list["Event"]]:
    """What the page shows first (a blocking store read): the outline and the newest window's events."""
    outline = store.event_outline(run_id)
    return outline, store.events(run_id, after=max(0, outline.last_seq - EVENTS_PAGE), limit=EVENTS_PAGE)


class EventsView(pn.viewable.Viewer):
    """The events card. ``poll(done)`` on every refresh of the run page; ``on_older``/``on_newer``/``on_newest`` page."""

    last_seq = param.Integer(default=0, bounds=(0, None), doc="the run's newest event seq: how many events it has")
    top = param.Integer(default=None, allow_None=True, doc="the newest seq of the window shown; None: the newest, following the run")
    actions = param.List(default=[], doc="events a person took from the dashboard, oldest first (the page's 'who' line)")
    done = param.Boolean(default=False, doc="the run has ended: no event is coming (the empty state says so)")

    def __init__(self, ctx: "AppContext", run_id: int, first: tuple["EventOutline", list["Event"]] | None = None, **params: Any) -> None:
        super().__init__(**params)
        self.ctx, self.run_id = ctx, run_id
        self.read_to = 0  # the newest seq read (shown or only counted)
        self.loaded = False
        self.chunks: list[list[Event]] = []  # the events of each pane of the list, newest pane first
        # scrolls inside the card: the notebook and the artifacts stay a short way down the page
        self.list = pn.Column(sizing_mode="stretch_width", margin=0, styles={"max-height": "70vh", "overflow-y": "auto"})
        self.newer = pn.widgets.Button(name="◀ Newer", button_style="outline", disabled=True, width=110)
        self.older = pn.widgets.Button(name="Older ▶", button_style="outline", disabled=True, width=110)
        self.newest = pn.widgets.Button(name="Newest", button_style="outline", width=100, visible=False)
        self.position = html_pane("", margin=(8, 10))
        self.pager = pn.FlexBox(self.newer, self.older, self.newest, self.position, flex_wrap="wrap", align_items="center",
                                sizing_mode="stretch_width", visible=False)
        self.empty = html_pane(loading_placeholder(4, "loading the events"))
        self.newer.on_click(self.on_newer)
        self.older.on_click(self.on_older)
        self.newest.on_click(self.on_newest)
        if first is not None:
            outline, events = first
            self._show(outline, events, None)

    def __panel__(self) -> Any:
        return card(self.pager, self.empty, self.list, title="Events")

    # -- reading ---------------------------------------------------------------------------------------------

    async def poll(self, done: bool) -> bool:
        """Read the events written since the last poll; on the newest window, show them on top. True if any came."""
        self.done = done
        if not self.loaded:
            await self._load(None)
            return True
        new = await self.ctx.read(self.ctx.store.events, self.run_id, after=self.read_to, limit=EVENTS_PAGE + 1)
        if len(new) > EVENTS_PAGE:  # more than a window since the last poll: read the newest window afresh
            if self.top is None:
                await self._load(None)
            else:
                outline = await self.ctx.read(self.ctx.store.event_outline, self.run_id)
                self._count(outline.last_seq, outline.actions)
            return True
        if new:
            self._count(new[-1].seq, self.actions + [e for e in new if is_action(e)])
            if self.top is None:
                self._prepend(new)
        return bool(new)

    async def _load(self, top: int | None) -> None:
        """Show the window whose newest seq is ``top`` (None: the newest window, then follow the run)."""
        outline = await self.ctx.read(self.ctx.store.event_outline, self.run_id)
        if top is not None and top >= outline.last_seq:
            top = None
        newest = outline.last_seq if top is None else top
        events = await self.ctx.read(self.ctx.store.events, self.run_id, after=max(0, newest - EVENTS_PAGE), limit=EVENTS_PAGE)
        self._show(outline, events, top)

    def _show(self, outline: "EventOutline", events: list["Event"], top: int | None) -> None:
        self.loaded = True
        self.chunks = [events] if events else []
        self.list.objects = [self._pane(events)] if events else []
        self.top = top
        self._count(outline.last_seq, outline.actions)

    def _count(self, last_seq: int, actions: list["Event"]) -> None:
        self.read_to = max(self.read_to, last_seq)
        if actions != self.actions:
            self.actions = actions
        self.last_seq = max(self.last_seq, last_seq)
        self._update_pager()

    def _prepend(self, new: list["Event"]) -> None:
        """New events on top in a pane of their own; the oldest pane goes once the others hold a window."""
        chunks = [new, *self.chunks]
        objects = [self._pane(new), *self.list.objects]
        while len(chunks) > 1 and sum(map(len, chunks)) - len(chunks[-1]) >= EVENTS_PAGE:
            chunks.pop()
            objects.pop()
        if len(chunks) > MAX_CHUNKS:  # the middle ones merge: the newest stay as they are, the oldest goes first as before
            keep = MAX_CHUNKS // 2
            merged = [event for chunk in chunks[keep:-1] for event in chunk]
            chunks, objects = [*chunks[:keep], merged, chunks[-1]], [*objects[:keep], self._pane(merged), objects[-1]]
        self.chunks = chunks
        self.list.objects = objects
        self._update_pager()

    @staticmethod
    def _pane(events: list["Event"]) -> pn.pane.HTML:
        return html_pane(timeline(sorted(events, key=lambda e: e.seq, reverse=True)), margin=0)

    # -- the pager -------------------------------------------------------------------------------------------

    def _shown_range(self) -> tuple[int, int]:
        seqs = [e.seq for chunk in self.chunks for e in chunk]
        return (min(seqs), max(seqs)) if seqs else (0, 0)

    @param.depends("done", watch=True)
    def _update_pager(self) -> None:
        low, high = self._shown_range()
        following = self.top is None
        self.pager.visible = self.last_seq > EVENTS_PAGE or not following
        newer = self.last_seq - high
        more = f" · {newer:,} newer" if newer > 0 and not following else ""
        self.position.object = f"events {low:,}–{high:,} of {self.last_seq:,}, newest first{more}" if high else ""
        self.newer.disabled = following
        self.older.disabled = low <= 1
        self.newest.visible = not following
        self.list.visible = bool(high)
        self.empty.visible = not high
        if self.loaded and not high:
            self.empty.object = (empty_state("This run recorded no events") if self.done else empty_state(
                "No events yet", "Cells starting and finishing, what they print and record show here as the run writes them."))

    async def on_older(self, _: Any = None) -> None:
        low, _high = self._shown_range()
        await self._load(max(1, low - 1))

    async def on_newer(self, _: Any = None) -> None:
        _low, high = self._shown_range()
        await self._load(high + EVENTS_PAGE)

    async def on_newest(self, _: Any = None) -> None:
        await self._load(None)
