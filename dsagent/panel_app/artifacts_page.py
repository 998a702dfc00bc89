"""The Artifacts page: every artifact as a card (thumbnail or kind icon, name, kind, size, age, run), newest first.

Keyset pages straight from the store (``id < before``), so the 100,000th artifact costs what the first does.
The filters and the page are in the address (``/artifacts?kind=table&run=12&before=4711``): a bookmark or a
reload shows the same artifacts, and the preload reads them before the page is built. The first page follows
new artifacts; an older page stays put.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import panel as pn
import panel_material_ui as pmui
import param

from dsagent.artifacts import schema
from dsagent.panel_app import artifact_cards, formats
from dsagent.panel_app.components import card, empty_state
from dsagent.panel_app.layout import after_first_paint, page_frame
from dsagent.panel_app.paging import put_in_address, query_day
from dsagent.panel_app.widgets import Notice, Poller, current_user, date_range_bounds, html_pane, preloaded, query_arg

if TYPE_CHECKING:
    from dsagent.artifacts.models import Artifact, Page
    from dsagent.panel_app.context import AppContext

__all__ = ["ArtifactsView", "page", "preload", "query_filters", "PAGE_SIZE"]

PAGE_SIZE = 24
SKELETON_AFTER_S = 0.15  # a read slower than this shows grey cards meanwhile (a quick one would only flicker)
_QUERY = ("kind", "q", "run", "mime", "since", "until", "before")
_NO_ARTIFACTS_HINT = ("Runs keep their plots, tables and files here. Make some: run "
                      "<code>dsagent run notebooks/sales_cohorts.ipynb</code>, or open <a href='./notebooks'>Notebooks</a> "
                      "and press Run, or ask a question on the <a href='./chat'>Chat</a> page.")


def query_filters(args: dict[str, str]) -> dict[str, Any]:
    """The page's state from the address's query (unknown values are ignored): what ``ArtifactsView`` takes."""
    state: dict[str, Any] = {}
    if args.get("kind") in schema.ARTIFACT_KINDS:
        state["kind"] = args["kind"]
    for key, name in (("q", "text"), ("mime", "mime")):
        if args.get(key):
            state[name] = args[key][:200]
    if (args.get("run") or "").isdigit():
        state["run"] = args["run"][:18]
    since, until = query_day(args.get("since")), query_day(args.get("until"))
    if since or until:
        state["dates"] = (since, until)
    if (args.get("before") or "").isdigit():
        state["before"] = min(int(args["before"]), 2**62)
    return state


def _search_args(state: dict[str, Any]) -> dict[str, Any]:
    """What ``store.search_artifacts`` is asked for this state (a run id that is not a number asks for no run)."""
    since, until = date_range_bounds(state.get("dates"))
    run = (state.get("run") or "").strip()
    before = state.get("before")
    return dict(kind=state.get("kind") if state.get("kind", "any") != "any" else None, run_id=int(run) if run.isdigit() else None,
                name=state.get("text") or None, mime=state.get("mime") or None, since=since, until=until, limit=PAGE_SIZE,
                cursor=str(before) if before is not None else None)


def preload(ctx: "AppContext", args: dict[str, str]) -> "Page[Artifact]":
    """The page of artifacts the address asks for, read before the page is built."""
    return ctx.store.search_artifacts(**_search_args(query_filters(args)))


class ArtifactsView(pn.viewable.Viewer):
    """The Artifacts page's state (the filters, the page) and its parts. A filter's change reads the first page and
    puts the filters in the address; ``on_older`` / ``on_newer`` / ``on_newest`` page through."""

    kind = param.Selector(default="any", objects=["any", *schema.ARTIFACT_KINDS], doc="artifacts of this kind only")
    text = param.String(default="", doc="text the name contains, or a glob (*.png)")
    run = param.String(default="", doc="the id of the run that made them (text as typed: a non-number is shown as an error)")
    mime = param.String(default="", doc="the start of the mime type (image/, text/csv)")
    dates = param.Parameter(default=None, doc="(first day, last day) the artifacts were made in, either may be None")
    before = param.Integer(default=None, allow_None=True, doc="the page shows artifacts with ids below this (None: the newest)")

    def __init__(self, ctx: "AppContext", first: "Page[Artifact] | None" = None, **params: Any) -> None:
        super().__init__(**params)
        self.ctx = ctx
        self._newer: list[int | None] = [None] if self.before is not None else []  # the pages before this one, for on_newer
        self._next: int | None = None  # where the page after this one starts
        self._shown: tuple[list[int], Any] | None = None  # (ids, minute) last rendered: a poll that finds the same sends nothing
        self._asked = 0  # reads asked for: only the newest one's answer is shown
        self.notice = Notice()
        self._build()
        self.gallery.object = "<ul class='ds-gallery'></ul>"  # (WIRE_THUMBS finds the pane by its list)
        if first is not None:  # the cards are in the document the browser receives
            self._show(first)
        else:
            self.gallery.object = artifact_cards.gallery_skeleton()
        self.poller = Poller(self.follow, max(2000, ctx.poll_ms * 4), first=first is None)
        doc = pn.state.curdoc
        if doc is not None:  # stops the thumbnails' frames pulsing once each has loaded (no inline script: the CSP)
            from bokeh.models import CustomJS

            doc.js_on_event("document_ready", CustomJS(code=artifact_cards.WIRE_THUMBS))

    def _build(self) -> None:
        # (description=None: no info icon repeating the parameter's doc next to the label)
        self.kind_input = pmui.Select.from_param(self.param.kind, label="Kind", description=None, width=130)
        self.name_input = pmui.TextInput(label="Name", placeholder="text or *.png", value=self.text, width=170)
        self.run_input = pmui.TextInput(label="Run", placeholder="run id", value=self.run, width=110)
        self.mime_input = pmui.TextInput(label="Type starts with", placeholder="image/, text/csv", value=self.mime, width=160)
        self.dates_input = pmui.DateRangePicker(label="Created between", value=self.dates, width=230)
        self.newest = pn.widgets.Button(name="Newest", button_style="outline", width=90)
        self.newer = pn.widgets.Button(name="◀ Newer", button_style="outline", width=100)
        self.older = pn.widgets.Button(name="Older ▶", button_style="outline", width=100)
        self.position = html_pane("", margin=(2, 0))
        self.gallery = html_pane("", stylesheets=[artifact_cards.CSS], css_classes=["ds-gallery-pane"], min_height=120, margin=0)
        self.empty = html_pane("", visible=False)
        self.pager = pn.FlexBox(self.newest, self.newer, self.older, flex_wrap="wrap", align_items="center", sizing_mode="stretch_width")
        for box, name in ((self.name_input, "text"), (self.mime_input, "mime"), (self.run_input, "run")):
            box.param.watch(lambda event, name=name: setattr(self, name, (event.new or "").strip()), "value_input")
            box.param.watch(lambda _: self._remember(), "value")  # Enter or leaving the box: into the address
        self.dates_input.param.watch(lambda e: setattr(self, "dates", e.new), "value")
        self.newest.on_click(self.on_newest)
        self.newer.on_click(self.on_newer)
        self.older.on_click(self.on_older)

    def __panel__(self) -> Any:
        filters = pn.FlexBox(self.kind_input, self.name_input, self.run_input, self.mime_input, self.dates_input,
                             flex_wrap="wrap", gap="4px 12px", sizing_mode="stretch_width")
        # the Material UI filters join once the first cards show (layout.after_first_paint)
        return page_frame("/artifacts", "Artifacts", self.notice.pane, card(after_first_paint(filters, height=72), margin=(4, 0)),
                          card(self.position, self.gallery, self.empty, self.pager), user=current_user())

    # -- reading ---------------------------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        return {"kind": self.kind, "text": self.text, "run": self.run, "mime": self.mime, "dates": self.dates, "before": self.before}

    async def refresh(self, *, placeholder: bool = True) -> None:
        """Read the page the state names and show it; grey cards meanwhile if the read is slow."""
        self._asked += 1
        asked = self._asked

        async def work() -> None:
            if self.run and not self.run.isdigit():  # nothing to read: the empty state says what is wrong
                from dsagent.artifacts.models import Page

                self._show(Page([], None))
                return
            reading = asyncio.ensure_future(self.ctx.read(self.ctx.store.search_artifacts, **_search_args(self.state())))
            done, _ = await asyncio.wait({reading}, timeout=SKELETON_AFTER_S)
            if not done and placeholder and asked == self._asked:
                self._shown = None
                self.gallery.object, self.empty.visible, self.gallery.visible = artifact_cards.gallery_skeleton(), False, True
            result = await reading
            if asked == self._asked:  # not overtaken by a newer read (typing in a box asks once a key)
                self._show(result)
        await self.notice.guard(work)

    async def follow(self) -> None:
        """The poll: new artifacts appear on the first page; an older page stays as it is."""
        if self.before is None:
            await self.refresh(placeholder=False)

    def _show(self, result: "Page[Artifact]") -> None:
        self._next = int(result.next_cursor) if result.next_cursor is not None else None
        self.newest.disabled = self.newer.disabled = self.before is None
        self.older.disabled = self._next is None
        shown = bool(result.items)
        if shown:
            now = formats.minute_now()
            key = ([a.id for a in result.items], now)
            if key != self._shown:  # unchanged (same artifacts, same minute): nothing to send
                self._shown = key
                self.gallery.object = artifact_cards.gallery_html(result.items, now)
            where = "newest first" if self.before is None else f"older than artifact {self.before}"
            self.position.object = f"<span class='ds-muted'>{len(result.items)} artifacts on this page, {where}</span>"
        else:
            self._shown = None
            self.empty.object = self._empty_text()
        if self.gallery.visible != shown:
            self.gallery.visible = self.position.visible = shown
        self.empty.visible = not shown
        self.pager.visible = shown or self.before is not None

    def _empty_text(self) -> str:
        if self.run and not self.run.isdigit():
            return empty_state("The run must be a number", "Type a run's id (as on the <a href='./runs'>Runs</a> page), or clear the box.",
                               icon_name="search")
        if self.before is not None:
            return empty_state("No older artifacts", "<a href='./artifacts'>Back to the newest</a>")
        if any(v not in ("any", "", None) for k, v in self.state().items() if k != "before"):
            return empty_state("No artifacts match these filters", "Change a filter above, or <a href='./artifacts'>show all "
                               "artifacts</a>.", icon_name="search")
        return empty_state("No artifacts yet", _NO_ARTIFACTS_HINT)

    # -- filters, pages, the address -------------------------------------------------------------------------

    @param.depends("kind", "dates", watch=True)
    async def _filters_changed(self) -> None:
        self._first_page()
        self._remember()
        await self.refresh()

    @param.depends("text", "mime", "run", watch=True)
    async def _text_changed(self) -> None:
        """Each keystroke filters; the address follows once the text is committed (not one history entry a key)."""
        self.run_input.param.update(error_state=bool(self.run) and not self.run.isdigit(),
                                    helper_text="a run's id is a number" if self.run and not self.run.isdigit() else "")
        self._first_page()
        await self.refresh()

    def _first_page(self) -> None:
        self.before, self._newer = None, []

    async def on_older(self, _: Any = None) -> None:
        if self._next is None:
            return
        self._newer.append(self.before)
        self.before = self._next
        self._remember()
        await self.refresh()

    async def on_newer(self, _: Any = None) -> None:
        self.before = self._newer.pop() if self._newer else None
        self._remember()
        await self.refresh()

    async def on_newest(self, _: Any = None) -> None:
        self._first_page()
        self._remember()
        await self.refresh()

    def query(self) -> dict[str, str]:
        """The state as the address's query: only what differs from the defaults."""
        since, until = self.dates or (None, None)
        values = {"kind": self.kind if self.kind != "any" else None, "q": self.text or None,
                  "run": self.run if self.run.isdigit() else None, "mime": self.mime or None,
                  "since": since.isoformat() if since else None, "until": until.isoformat() if until else None,
                  "before": str(self.before) if self.before is not None else None}
        return {k: v for k, v in values.items() if v}

    def _remember(self) -> None:
        """The filters and the page into the address (a bookmark, a reload, the back button show the same cards)."""
        put_in_address(self.query())


def page(ctx: "AppContext") -> Any:
    args = {name: value for name in _QUERY if (value := query_arg(name))}
    return ArtifactsView(ctx, preloaded(), **query_filters(args))
