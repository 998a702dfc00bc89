"""What the pages that list things one page at a time share: the ◀ ▶ pager with its "runs 1–50 of 812" line, the area
a list's table is made in, and the filters in the address.

The Runs, Notebooks and notebook pages page by offset (``Pager``, ``TableSlot``); the Runs and Artifacts pages keep
their filters in the address (``put_in_address``, ``query_day``) so a bookmark, a reload or the back button show the
same page.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import date
from typing import Any
from urllib.parse import urlencode

import pandas as pd
import panel as pn

from dsagent.panel_app.widgets import Table, html_pane

__all__ = ["Pager", "TableSlot", "put_in_address", "query_day"]


def put_in_address(query: Mapping[str, str]) -> None:
    """The page's filters as the address's query (no reload): what a bookmark, a reload and the back button come back to."""
    location = pn.state.location
    if location is not None:
        text = urlencode(query)
        location.search = f"?{text}" if text else ""


def query_day(text: str | None) -> date | None:
    """A day from the address (``2026-03-02``); None when absent or not a date (a hand-edited address is ignored)."""
    try:
        return date.fromisoformat(text) if text else None
    except ValueError:
        return None


class Pager:
    """The ◀ and ▶ buttons and where the page is ("runs 1–50 of 812") in one row (``row``), shown while the page lists
    something. ``extra`` joins the row after them (the notebook page's Compare button)."""

    def __init__(self, on_newer: Callable[[Any], Any], on_older: Callable[[Any], Any], *, labels: tuple[str, str] = ("◀ Newer", "Older ▶"),
                 position_width: int | None = None, extra: tuple[Any, ...] = (), visible: bool = True) -> None:
        # Panel's own buttons (in panel-material-ui's design): there at first paint, unlike Material UI's
        self.newer = pn.widgets.Button(name=labels[0], button_style="outline", disabled=True, width=110)
        self.older = pn.widgets.Button(name=labels[1], button_style="outline", disabled=True, width=110)
        self.position = html_pane("", margin=(12, 10), **({"width": position_width} if position_width else {}))
        self.row = pn.FlexBox(self.newer, self.older, self.position, *extra, flex_wrap="wrap", align_items="center",
                              sizing_mode="stretch_width", visible=visible)
        self.newer.on_click(on_newer)
        self.older.on_click(on_older)

    def show(self, noun: str, offset: int, count: int, total: int) -> None:
        """A page of ``count`` of ``total`` things from ``offset`` on: the line, which way there is more, the row shown if any."""
        last = offset + count
        self.position.object = f"{noun} {offset + 1}–{last} of {total}" if count else ""
        self.newer.disabled = offset == 0
        self.older.disabled = last >= total
        self.row.visible = bool(count)


class TableSlot:
    """Where a list's table shows (``area``): the table is made with its rows in an area that is already showing, and
    leaves the page while the list is empty, to come back made anew.

    A Tabulator made or filled inside a hidden area and shown in the same update at times rendered no row at all under
    load (CI saw it on the Runs, Notebooks and notebook pages, and on the batch page's comparison).
    """

    def __init__(self, make: Callable[[pd.DataFrame], Table], table: Table | None = None) -> None:
        self.make = make  # a table with these first rows
        self.table = table  # (a page may start with an empty table: its header shows until the first read)
        self.area = pn.Column(*([table] if table is not None else []), sizing_mode="stretch_width", margin=0)

    def show(self, frame: pd.DataFrame) -> bool:
        """Show these rows (none: the table leaves the page). True when the table that was there took new rows."""
        if frame.empty:
            if self.area.objects:
                self.table, self.area.objects = None, []
            return False
        if self.table is None or not self.area.objects:
            self.table = self.make(frame)
            self.area.objects = [self.table]
            return False
        if frame.equals(self.table.value):
            return False
        self.table.value = frame
        return True
