"""The Notebooks page (``/notebooks``): the notebooks a user can run, one page at a time, and uploading one.

The list is ``runs/notebook_library.py``'s: the workspace's ``notebooks/``
(uploads, notebooks saved from chats) and the shipped folders (the
``notebook_folders`` setting). Each links to its own page
(``/notebook?path=...``, ``notebook_page.py``) with the parameter form, Run,
Sweep and the notebook's recent runs. An upload is checked with nbformat and
never replaces a notebook of the same name unless the user says so.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import pandas as pd
import panel as pn
import panel_material_ui as pmui
import param

from dsagent.errors import DsagentError
from dsagent.panel_app import formats, untrusted
from dsagent.panel_app.components import card, empty_state, loading_placeholder
from dsagent.panel_app.layout import after_first_paint, page_frame
from dsagent.panel_app.paging import Pager, TableSlot
from dsagent.panel_app.widgets import Notice, Poller, Table, current_user, html_pane
from dsagent.runs.notebook_library import WORKSPACE_SOURCE, list_notebooks, notebook_folders, save_uploaded_notebook

if TYPE_CHECKING:
    from dsagent.panel_app.context import AppContext
    from dsagent.runs.notebook_library import NotebookEntry, NotebookPage

__all__ = ["NotebooksView", "page", "notebook_href", "source_text"]

PAGE_SIZE = 25
COLUMNS = ["notebook", "from", "modified", "size"]
_WIDTHS = {"from": 210, "modified": 112, "size": 84}  # the name takes the rest
_NO_NOTEBOOKS_HINT = ("Upload an <code>.ipynb</code> below, save a chat as a notebook on the <a href='./chat'>Chat</a> page, or put "
                      "notebooks in a folder of the <code>notebook_folders</code> setting (listed under the table).")


def notebook_href(path) -> str:
    return f"./notebook?path={quote(str(path), safe='')}"


def source_text(entry: "NotebookEntry") -> str:
    """Where a notebook comes from, in words (plain text)."""
    return "uploaded / saved from a chat" if entry.source == WORKSPACE_SOURCE else f"shipped ({entry.source})"


def _frame(items: list["NotebookEntry"], now=None) -> pd.DataFrame:
    now = now or formats.minute_now()
    return pd.DataFrame(
        [{"notebook": f'<a href="{notebook_href(e.path)}">{untrusted.text(e.name)}</a>', "from": untrusted.text(source_text(e)),
          "modified": formats.time_cell(e.modified, now), "size": formats.size(e.size)} for e in items],
        columns=COLUMNS,
    )


class NotebooksView(pn.viewable.Viewer):
    """The list (``text`` filters names, ``offset`` pages) and the upload. ``on_older``/``on_newer`` page through;
    ``on_upload`` saves a chosen file, ``on_replace`` saves it over the notebook of the same name."""

    text = param.String(default="", doc="text the file name contains")
    offset = param.Integer(default=0, bounds=(0, None), doc="the first notebook shown")

    def __init__(self, ctx: "AppContext", **params: Any) -> None:
        super().__init__(**params)
        self.ctx = ctx
        self.notice = Notice()
        self._pending: tuple[str, bytes] | None = None  # an upload waiting for "Replace it"
        self._build()
        Poller(self.refresh, max(3000, ctx.poll_ms * 6))  # uploads and chats add notebooks

    def _build(self) -> None:
        self.text_input = pmui.TextInput(label="Name contains", placeholder="text in the file name", value=self.text, width=220)
        self.pager = Pager(self.on_newer, self.on_older, labels=("◀ Previous", "Next ▶"), position_width=200, visible=False)
        self.rows = TableSlot(_table)  # made with its first rows (paging.TableSlot says why)
        self.empty = html_pane(loading_placeholder(4, "loading the notebooks"))
        self.folders = html_pane("", margin=(4, 5), stylesheets=["code {overflow-wrap: anywhere}"])
        self.upload = pmui.FileInput(accept=".ipynb", multiple=False, label="Upload a notebook", icon="upload_file")
        self.replace = pmui.Button(label="Replace it", color="warning", visible=False, width=130)
        self.upload_message = html_pane("", margin=(0, 5))
        self.text_input.param.watch(lambda e: setattr(self, "text", e.new or ""), "value_input")
        self.upload.param.watch(self.on_upload, "value")
        self.replace.on_click(self.on_replace)

    def __panel__(self) -> Any:
        intro = html_pane("<span class='ds-muted'>Pick a notebook to run it with other parameters, sweep a grid of them, or compare "
                          "its runs.</span>", margin=(0, 5))
        upload = pn.FlexBox(self.upload, self.replace, align_items="center", gap="12px", sizing_mode="stretch_width")
        return page_frame(
            "/notebooks", "Notebooks", self.notice.pane, intro,
            card(after_first_paint(self.text_input, height=56), self.pager.row, self.rows.area, self.empty, self.folders),
            card(html_pane("<span class='ds-muted'>An <code>.ipynb</code> saved by Jupyter; it lands in the workspace's "
                           "<code>notebooks/</code> folder. A notebook of the same name is only replaced when you say so.</span>",
                           margin=(0, 5)), after_first_paint(upload, height=48), self.upload_message, title="Upload"),
            user=current_user())

    # -- the list ---------------------------------------------------------------------------------------------

    async def refresh(self) -> None:
        async def work() -> None:
            result = await self.ctx.read(list_notebooks, self.ctx.settings, text=self.text or None, offset=self.offset, limit=PAGE_SIZE)
            listed = await self.ctx.read(notebook_folders, self.ctx.settings)
            self._show(result)
            self.folders.object = ("<span class='ds-muted'>Listed from: " + ", ".join(
                f"<code>{untrusted.text(str(folder))}</code>" for _, folder in listed) + "</span>")
        await self.notice.guard(work)

    def _show(self, result: "NotebookPage") -> None:
        shown = bool(result.items)
        self.rows.show(_frame(result.items))
        self.pager.newer.visible = self.pager.older.visible = result.total > PAGE_SIZE  # one page: nothing to page through
        self.pager.show("notebooks", result.offset, len(result.items), result.total)
        self.empty.visible = not shown
        if not shown:
            self.empty.object = self._empty_text()

    def _empty_text(self) -> str:
        if self.offset:
            return empty_state("No notebooks on this page", "<a href='./notebooks'>Back to the first page</a>")
        if self.text:
            return empty_state(f"No notebook names contain “{self.text}”", "Change the text above, or clear it to see every notebook.",
                               icon_name="search")
        return empty_state("No notebooks yet", _NO_NOTEBOOKS_HINT, icon_name="notebooks")

    @param.depends("text", watch=True)
    async def _text_changed(self) -> None:
        self.offset = 0
        await self.refresh()

    async def on_older(self, _: Any) -> None:
        self.offset += PAGE_SIZE
        await self.refresh()

    async def on_newer(self, _: Any) -> None:
        self.offset = max(0, self.offset - PAGE_SIZE)
        await self.refresh()

    # -- uploading --------------------------------------------------------------------------------------------

    async def on_upload(self, _: Any) -> None:
        if not self.upload.value:
            return
        self._pending = (self.upload.filename or "notebook.ipynb", bytes(self.upload.value))
        self.upload.clear()  # so choosing the same file again is a new upload
        await self._save(False)

    async def on_replace(self, _: Any) -> None:
        if self._pending is not None:
            await self._save(True)

    async def _save(self, overwrite: bool) -> None:
        filename, data = self._pending
        try:
            entry = await self.ctx.read(save_uploaded_notebook, filename, data, self.ctx.settings, overwrite=overwrite)
        except DsagentError as exc:
            exists = getattr(exc, "reason", None) == "exists"
            self.replace.visible = exists
            self.upload_message.object = (f"<span style='color:var(--ds-failed)'>{untrusted.text(exc.message)}.</span> "
                                          f"{untrusted.text(exc.hint)}")
            if not exists:
                self._pending = None
            return
        self._pending = None
        self.replace.visible = False
        self.upload_message.object = f"Saved <a href='{notebook_href(entry.path)}'>{untrusted.text(entry.name)}</a>."
        await self.refresh()


def _table(frame: pd.DataFrame) -> Table:
    """The notebooks' table, made with its first rows."""
    return Table(frame, show_index=False, disabled=True, sizing_mode="stretch_width", layout="fit_columns", widths=_WIDTHS,
                 formatters={c: {"type": "html"} for c in ("notebook", "from", "modified")}, name="notebooks",
                 configuration={"columnDefaults": {"headerSort": False}, "columns": [{"field": "notebook", "minWidth": 180}]})


def page(ctx: "AppContext") -> Any:
    from dsagent.panel_app.widgets import query_arg

    return NotebooksView(ctx, text=(query_arg("q") or "")[:200])  # /notebooks?q=cohort: a link to the names containing it
