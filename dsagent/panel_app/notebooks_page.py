"""The Notebooks page (``/notebooks``): the notebooks a user can run, one page at a time, and uploading one.

The list is ``runs/notebook_library.py``'s: the workspace's ``notebooks/``
(uploads, notebooks saved from chats) and the shipped folders (the
``notebook_folders`` setting). Each links to its own page
(``/notebook?path=...``, ``notebook_page.py``) with the parameter form, Run,
Sweep and the notebook's recent runs. An upload is checked with nbformat and
never replaces a notebook of the same name unless the user says so.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import quote

import pandas as pd
import panel as pn

from dsagent.panel_app import untrusted
from dsagent.errors import DsagentError
from dsagent.panel_app.widgets import Notice, current_user, html_pane, human_size, page_frame, time_text
from dsagent.runs.notebook_library import WORKSPACE_SOURCE, list_notebooks, notebook_folders, save_uploaded_notebook

if TYPE_CHECKING:
    from dsagent.panel_app.context import AppContext
    from dsagent.runs.notebook_library import NotebookEntry

__all__ = ["page", "notebook_href"]

PAGE_SIZE = 25
COLUMNS = ["notebook", "from", "modified", "size"]


def notebook_href(path) -> str:
    return f"./notebook?path={quote(str(path), safe='')}"


def _frame(items: list["NotebookEntry"]) -> pd.DataFrame:
    return pd.DataFrame(
        [{"notebook": f'<a href="{notebook_href(e.path)}">{untrusted.text(e.name)}</a>',
          "from": "uploaded / saved from a chat" if e.source == WORKSPACE_SOURCE else f"shipped ({untrusted.text(e.source)})",
          "modified": time_text(e.modified), "size": human_size(e.size)} for e in items],
        columns=COLUMNS,
    )


def page(ctx: "AppContext") -> pn.Column:
    notice = Notice()
    text = pn.widgets.TextInput(name="name contains", placeholder="text in the file name", width=220)
    prev_button = pn.widgets.Button(name="◀ previous", width=100, disabled=True)
    next_button = pn.widgets.Button(name="next ▶", width=90, disabled=True)
    position = pn.pane.HTML("", width=260)
    table = pn.widgets.Tabulator(_frame([]), show_index=False, disabled=True, sizing_mode="stretch_width", layout="fit_data_fill",
                                 widths={"notebook": 320, "from": 360},
                                 formatters={"notebook": {"type": "html"}, "from": {"type": "html"}},
                                 configuration={"columnDefaults": {"headerSort": False}}, name="notebooks")
    folders = html_pane("")
    upload = pn.widgets.FileInput(accept=".ipynb", multiple=False, name="upload a notebook")
    replace = pn.widgets.Button(name="Replace it", button_type="warning", visible=False, width=110)
    upload_message = html_pane("")
    state: dict = {"offset": 0, "pending": None}

    async def refresh(*_) -> None:
        async def work() -> None:
            result = await ctx.read(list_notebooks, ctx.settings, text=(text.value_input or text.value or None), offset=state["offset"],
                                    limit=PAGE_SIZE)
            frame = _frame(result.items)
            if not frame.equals(table.value):
                table.value = frame
            last = min(result.offset + PAGE_SIZE, result.total)
            position.object = f"notebooks {result.offset + 1 if result.total else 0}–{last} of {result.total}"
            prev_button.disabled = result.offset == 0
            next_button.disabled = last >= result.total
            listed = await ctx.read(notebook_folders, ctx.settings)
            folders.object = "Listed from: " + ", ".join(f"<code>{untrusted.text(str(folder))}</code>" for _, folder in listed)
        await notice.guard(work)

    async def first_page(*_) -> None:
        state["offset"] = 0
        await refresh()

    async def older(_) -> None:
        state["offset"] += PAGE_SIZE
        await refresh()

    async def newer(_) -> None:
        state["offset"] = max(0, state["offset"] - PAGE_SIZE)
        await refresh()

    async def save(overwrite: bool) -> None:
        filename, data = state["pending"]
        try:
            entry = await ctx.read(save_uploaded_notebook, filename, data, ctx.settings, overwrite=overwrite)
        except DsagentError as exc:
            exists = getattr(exc, "reason", None) == "exists"
            replace.visible = exists
            upload_message.object = f"<span style='color:#dc3545'>{untrusted.text(exc.message)}.</span> {untrusted.text(exc.hint)}"
            if not exists:
                state["pending"] = None
            return
        state["pending"] = None
        replace.visible = False
        upload_message.object = f"Saved <a href='{notebook_href(entry.path)}'>{untrusted.text(entry.name)}</a>."
        await refresh()

    async def on_upload(event) -> None:
        if not upload.value:
            return
        state["pending"] = (upload.filename or "notebook.ipynb", bytes(upload.value))
        upload.clear()  # so choosing the same file again is a new upload
        await save(False)

    async def on_replace(_) -> None:
        if state["pending"] is not None:
            await save(True)

    text.param.watch(first_page, "value_input")
    upload.param.watch(on_upload, "value")
    replace.on_click(on_replace)
    next_button.on_click(older)
    prev_button.on_click(newer)
    pn.state.onload(refresh)
    pn.state.add_periodic_callback(refresh, period=max(3000, ctx.poll_ms * 6))  # uploads and chats add notebooks
    return page_frame(
        "/notebooks", "Notebooks", notice.pane,
        pn.pane.Markdown("Pick a notebook to run it with other parameters, sweep a grid of them, or compare its runs."),
        pn.Row(text, prev_button, next_button, position), table, folders,
        pn.pane.Markdown("### Upload"), pn.Row(upload, replace), upload_message,
        user=current_user(),
    )
