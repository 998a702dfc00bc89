"""The Runs page: a table of runs, filtered and sorted in the store, one page at a time, newest first.

The table holds one page (the store counts and sorts, so 10,000 runs cost what
50 do) and follows new runs: it re-reads its page every poll interval and
updates only when something changed. The filters and the page are in the
address (``/runs?status=failed&kind=notebook&page=2``): a bookmark or a reload
shows the same runs, and the preload reads them before the page is built.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pandas as pd
import panel as pn
import panel_material_ui as pmui
import param

from dsagent.artifacts import schema
from dsagent.panel_app import formats, untrusted
from dsagent.panel_app.components import card, empty_state, status_chip
from dsagent.panel_app.layout import after_first_paint, page_frame
from dsagent.panel_app.paging import Pager, TableSlot, put_in_address, query_day
from dsagent.panel_app.widgets import Notice, Poller, Table, current_user, date_range_bounds, html_pane, preloaded, run_link

if TYPE_CHECKING:
    from dsagent.artifacts.models import Run
    from dsagent.artifacts.store import RunPage
    from dsagent.panel_app.context import AppContext

__all__ = ["RunsView", "page", "preload", "runs_frame", "query_filters"]

PAGE_SIZE = 50
#: the sort choices: address value -> (label, store column, descending)
SORTS = {"newest": ("newest first", "id", True), "oldest": ("oldest first", "id", False), "longest": ("longest", "duration", True),
         "title": ("title", "title", False), "status": ("status", "status", False), "kind": ("kind", "kind", False)}
COLUMNS = ["run", "status", "title", "started", "duration", "kind", "backend", "parent"]  # what matters first: a phone shows the left
_WIDTHS = {"run": 76, "kind": 96, "status": 128, "started": 112, "duration": 104, "backend": 92, "parent": 72}  # the title takes the rest
_HTML_COLUMNS = ("run", "status", "title", "started", "parent")
_NO_RUNS_HINT = ("Start one from a terminal: <code>dsagent run notebooks/sales_cohorts.ipynb</code>, or open "
                 "<a href='./notebooks'>Notebooks</a> and press Run.")


def runs_frame(runs: "list[Run]", now=None) -> pd.DataFrame:
    """One page of runs as the table's rows (HTML cells: links, chips, relative times; titles escaped)."""
    now = now or formats.minute_now()
    return pd.DataFrame(
        [{"run": run_link(r.id), "kind": r.kind, "status": status_chip(r.status), "title": untrusted.text(r.title or ""),
          "started": formats.time_cell(r.started or r.created, now), "duration": formats.run_duration(r), "backend": r.backend or "",
          "parent": run_link(r.parent_id)} for r in runs],
        columns=COLUMNS,
    )


def query_filters(args: dict[str, str]) -> dict[str, Any]:
    """The page's state from the address's query (unknown values are ignored): what ``RunsView`` takes."""
    state: dict[str, Any] = {}
    if args.get("kind") in schema.RUN_KINDS:
        state["kind"] = args["kind"]
    if args.get("status") in schema.RUN_STATUSES:
        state["status"] = args["status"]
    if args.get("q"):
        state["text"] = args["q"][:200]
    since, until = query_day(args.get("since")), query_day(args.get("until"))
    if since or until:
        state["dates"] = (since, until)
    if args.get("sort") in SORTS:
        state["sort"] = args["sort"]
    if (args.get("page") or "").isdigit() and int(args["page"]) > 1:
        state["offset"] = (min(int(args["page"]), 10**6) - 1) * PAGE_SIZE
    return state


def _search_args(state: dict[str, Any]) -> dict[str, Any]:
    """What ``store.search_runs`` is asked for this state."""
    since, until = date_range_bounds(state.get("dates"))
    _, column, descending = SORTS[state.get("sort", "newest")]
    return dict(kind=state.get("kind") if state.get("kind", "any") != "any" else None,
                status=state.get("status") if state.get("status", "any") != "any" else None,
                text=state.get("text") or None, since=since, until=until, sort=column, descending=descending,
                offset=state.get("offset", 0), limit=PAGE_SIZE)


def preload(ctx: "AppContext", args: dict[str, str]) -> "RunPage":
    """The page the address asks for (filters, sort, page), read before the page is built."""
    return ctx.store.search_runs(**_search_args(query_filters(args)))


class RunsView(pn.viewable.Viewer):
    """The Runs page's state (the filters, the page) and its parts. A filter's change reads the first page and
    puts the filters in the address; ``on_older``/``on_newer`` page through; ``on_clear`` drops every filter."""

    kind = param.Selector(default="any", objects=["any", *schema.RUN_KINDS], doc="runs of this kind only")
    status = param.Selector(default="any", objects=["any", *schema.RUN_STATUSES], doc="runs in this status only")
    text = param.String(default="", doc="text the title contains")
    dates = param.Parameter(default=None, doc="(first day, last day) the runs were created in, either may be None")
    sort = param.Selector(default="newest", objects=list(SORTS), doc="the order, a key of SORTS")
    offset = param.Integer(default=0, bounds=(0, None), doc="the first run shown (0: the first page)")
    total = param.Integer(default=0, doc="how many runs match the filters")

    def __init__(self, ctx: "AppContext", first: "RunPage | None" = None, **params: Any) -> None:
        super().__init__(**params)
        self.ctx = ctx
        self._asked = 0  # reads asked for: only the newest one's answer is shown
        self.notice = Notice()
        self._build()
        if first is not None:  # the page is in the document the browser receives
            self._show(first)
        self.poller = Poller(self.refresh, max(1000, ctx.poll_ms * 2), first=first is None)

    def _build(self) -> None:
        # (description=None: no info icon repeating the parameter's doc next to the label)
        self.kind_input = pmui.Select.from_param(self.param.kind, label="Kind", description=None, width=130)
        self.status_input = pmui.Select.from_param(self.param.status, label="Status", description=None, width=140)
        self.text_input = pmui.TextInput(label="Title contains", placeholder="text in the title", value=self.text, width=190)
        self.dates_input = pmui.DateRangePicker(label="Created between", value=self.dates, width=230)
        self.sort_input = pmui.Select(label="Sort", options={label: key for key, (label, _, _) in SORTS.items()}, value=self.sort, width=150)
        self.pager = Pager(self.on_newer, self.on_older, position_width=220)
        # the table leaves the page while no run matches and comes back made anew (paging.TableSlot); until the first
        # read it shows empty, its header in place
        self.rows = TableSlot(_runs_table, _runs_table(runs_frame([])))
        self.empty = html_pane("", visible=False)
        self.text_input.param.watch(self._typed, "value_input")
        self.text_input.param.watch(lambda _: self._remember(), "value")  # Enter or leaving the box: into the address
        self.dates_input.param.watch(lambda e: setattr(self, "dates", e.new), "value")
        self.sort_input.param.watch(lambda e: setattr(self, "sort", e.new), "value")

    def __panel__(self) -> Any:
        filters = pn.FlexBox(self.kind_input, self.status_input, self.text_input, self.dates_input, self.sort_input,
                             flex_wrap="wrap", gap="4px 12px", sizing_mode="stretch_width")
        # the Material UI filters join once the first page of runs shows (layout.after_first_paint)
        return page_frame("/runs", "Runs", self.notice.pane, card(after_first_paint(filters, height=72), margin=(4, 0)),
                          card(self.pager.row, self.rows.area, self.empty), user=current_user())

    # -- reading ---------------------------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        return {"kind": self.kind, "status": self.status, "text": self.text, "dates": self.dates, "sort": self.sort, "offset": self.offset}

    async def refresh(self, *_: Any) -> None:
        self._asked += 1
        asked = self._asked

        async def work() -> None:
            result = await self.ctx.read(self.ctx.store.search_runs, **_search_args(self.state()))
            if asked == self._asked:  # not overtaken by a newer read (typing in the title box asks once a key)
                self._show(result)
        await self.notice.guard(work)

    def _show(self, result: "RunPage") -> None:
        self.total, shown = result.total, bool(result.items)
        self.rows.show(runs_frame(result.items))
        self.pager.show("runs", result.offset, len(result.items), result.total)
        self.empty.visible = not shown
        if not shown:
            self.empty.object = self._empty_text()

    def _empty_text(self) -> str:
        if self.offset:
            return empty_state("No runs on this page", "<a href='./runs'>Back to the first page</a>")
        if any(v not in ("any", "", None) for k, v in self.state().items() if k not in ("sort", "offset")):
            return empty_state("No runs match these filters", "Change a filter above, or <a href='./runs'>show all runs</a>.",
                               icon_name="search")
        return empty_state("No runs yet", _NO_RUNS_HINT)

    # -- filters, pages, the address -------------------------------------------------------------------------

    def _typed(self, event: Any) -> None:
        self.text = event.new or ""

    @param.depends("kind", "status", "dates", "sort", watch=True)
    async def _filters_changed(self) -> None:
        self.offset = 0
        self._remember()
        await self.refresh()

    @param.depends("text", watch=True)
    async def _text_changed(self) -> None:
        """Each keystroke filters; the address follows once the text is committed (not one history entry a key)."""
        self.offset = 0
        await self.refresh()

    async def on_older(self, _: Any) -> None:
        self.offset += PAGE_SIZE
        self._remember()
        await self.refresh()

    async def on_newer(self, _: Any) -> None:
        self.offset = max(0, self.offset - PAGE_SIZE)
        self._remember()
        await self.refresh()

    def query(self) -> dict[str, str]:
        """The state as the address's query: only what differs from the defaults."""
        since, until = self.dates or (None, None)
        values = {"kind": self.kind if self.kind != "any" else None, "status": self.status if self.status != "any" else None,
                  "q": self.text or None, "since": since.isoformat() if since else None, "until": until.isoformat() if until else None,
                  "sort": self.sort if self.sort != "newest" else None, "page": str(self.offset // PAGE_SIZE + 1) if self.offset else None}
        return {k: v for k, v in values.items() if v}

    def _remember(self) -> None:
        """The filters into the address (a bookmark, a reload, the back button show the same runs)."""
        put_in_address(self.query())


def page(ctx: "AppContext") -> Any:
    from dsagent.panel_app.widgets import query_arg

    args = {name: value for name in ("kind", "status", "q", "since", "until", "sort", "page") if (value := query_arg(name))}
    return RunsView(ctx, preloaded(), **query_filters(args))


def _runs_table(frame: pd.DataFrame) -> Table:
    return Table(
        # fit_columns with set widths: fit_data_fill measured every cell first, which made the first page
        # render markedly slower (bench/dashboard.py)
        frame, show_index=False, disabled=True, sizing_mode="stretch_width", height=520, layout="fit_columns",
        widths=_WIDTHS, formatters={c: {"type": "html"} for c in _HTML_COLUMNS},
        # the title keeps room to be read on a phone (the table scrolls sideways inside its card instead)
        configuration={"columnDefaults": {"headerSort": False}, "columns": [{"field": "title", "minWidth": 180}]}, name="runs")
