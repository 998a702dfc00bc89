"""The Chat page's left column: the chats (a page at a time) and the "New chat" form with its uploads."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

import panel as pn
import param

from dsagent.panel_app import untrusted
from dsagent.panel_app.chat_data import DATA_TYPES, check_uploads, create_chat_with_uploads
from dsagent.panel_app.chat_render import chat_pane

if TYPE_CHECKING:
    from dsagent.panel_app.chat_host import ChatHost
    from dsagent.panel_app.context import AppContext
    from dsagent.panel_app.widgets import Notice

__all__ = ["ChatSidebar", "GRAPHS", "go", "uploading"]

GRAPHS = ["analysis", "coding", "team"]
CHATS_PER_PAGE = 30
SIDEBAR_WIDTH = 290


def chat_list_html(store: Any, current: int | None, cursor: str | None) -> tuple[str, str | None]:
    """One page of the chats as HTML (what each does now: answering, open here or elsewhere), and the next cursor."""
    page_ = store.chats.list(limit=CHATS_PER_PAGE, cursor=cursor)
    rows = []
    for c in page_.items:
        state = ("<small style='color:#0d6efd'>(answering)</small>" if c.status == "running" else
                 "<small style='color:#198754'>(open)</small>" if c.held else "")
        style = "font-weight:bold" if c.id == current else ""
        rows.append(f'<div style="margin:3px 0"><a style="{style}" href="./chat?id={c.id}">{untrusted.text(c.name)}</a> {state}'
                    f'<br><small style="color:#666">{c.turns} turn(s) · {untrusted.text(c.graph)} · {untrusted.text(c.backend)}</small></div>')
    return "".join(rows) or "<i>no chats yet: create one below</i>", page_.next_cursor


def uploading(dropper: pn.widgets.FileDropper) -> bool:
    """Whether a file's chunks are still arriving (Panel keeps them in ``_file_buffer`` until the last one)."""
    return bool(getattr(dropper, "_file_buffer", None))


def go(search: str) -> None:
    """Load this page again with another query (a new or deleted chat): the address stays bookmarkable."""
    location = pn.state.location
    if location is not None:
        location.reload = True
        location.search = search


def _error(exc: BaseException) -> str:
    return f"<span style='color:#dc3545'>{untrusted.text(str(exc))}</span>"


class ChatSidebar(pn.viewable.Viewer):
    """The chats column; ``load()`` reads the list again (the page calls it when a turn ends: the counts change)."""

    current = param.Integer(default=None, allow_None=True, doc="the chat the page shows (bold in the list)")
    cursor = param.String(default=None, allow_None=True, doc="where the next page of older chats starts")

    def __init__(self, ctx: "AppContext", host: "ChatHost", notice: "Notice", **params: Any) -> None:
        super().__init__(**params)
        self.ctx, self.host, self.notice = ctx, host, notice
        self.limit = ctx.settings.dashboard_upload_limit
        self.listing = chat_pane("loading…")
        self.older = pn.widgets.Button(name="Older chats", button_type="light", visible=False, width=120)
        self.chat_name = pn.widgets.TextInput(name="Name", placeholder="e.g. sales q3 (default: date and time)", width=260)
        # FileDropper checks the size in the browser, so a file over the limit is refused before a byte is sent, and sends
        # the rest in chunks: one big websocket message (Bokeh's FileInput) closed the page's connection past ~60 MiB (no type
        # filter in the browser: Windows reports a .csv as application/vnd.ms-excel; the type is checked on Create)
        self.files = pn.widgets.FileDropper(multiple=True, max_file_size=str(self.limit), width=260, name="datasets", layout="compact")
        self.agent = pn.widgets.Select(name="Agent", options=GRAPHS, value="analysis", width=260)
        self.backend = self._backend_select(ctx)
        self.create = pn.widgets.Button(name="Create chat", button_type="primary", width=140)
        self.message = chat_pane("", width=260)
        self.files.param.watch(self._on_files, "value")
        self.older.on_click(self.on_older)
        self.create.on_click(self.on_create)

    @staticmethod
    def _backend_select(ctx: "AppContext") -> pn.widgets.Select:
        from dsagent.kernel_gateway.registry import backend_registry

        names = backend_registry.names()
        default = ctx.settings.agent_backend if ctx.settings.agent_backend in names else names[0]
        return pn.widgets.Select(name="Kernel backend", options=names, value=default, width=260)

    def __panel__(self) -> pn.Column:
        # FilePond counts in powers of 1000: say the limit its way too, so its "Maximum file size is ..." matches the hint
        hint = chat_pane(f"<small>{', '.join(DATA_TYPES)}; up to {self.limit / 1e6:.1f} MB ({self.limit / 2**20:.0f} MiB) each</small>",
                         width=260)
        return pn.Column(pn.pane.Markdown("### Chats"), self.listing, self.older, pn.pane.Markdown("### New chat"), self.chat_name, self.files,
                         hint, self.agent, self.backend, self.create, self.message, width=SIDEBAR_WIDTH,
                         styles={"border-right": "1px solid #eee"})

    async def load(self, older: bool = False) -> None:
        async def work() -> None:
            text, self.cursor = await self.ctx.read(chat_list_html, self.ctx.store, self.current, self.cursor if older else None)
            self.listing.object = (self.listing.object + text) if older else text
            self.older.visible = self.cursor is not None
        await self.notice.guard(work)

    async def on_older(self, _: Any = None) -> None:
        await self.load(older=True)

    def _on_files(self, event: Any) -> None:
        listed = ", ".join(f"{untrusted.text(name)} ({len(data) / 1e6:.1f} MB)" for name, data in event.new.items())
        self.message.object = f"<small>received: {listed}</small>" if listed else ""

    async def on_create(self, _: Any = None) -> None:
        """Check the uploads (nothing is written when one is refused), create the chat, go to it."""
        if uploading(self.files):
            self.message.object = "<span style='color:#dc3545'>a file is still uploading: create the chat when its bar is full</span>"
            return
        self.create.disabled = True
        try:
            contents = [data.encode("utf-8") if isinstance(data, str) else data for data in self.files.value.values()]
            checked = check_uploads(list(self.files.value), contents, self.limit)
            title = self.chat_name.value.strip() or datetime.now().strftime("chat %Y-%m-%d %H:%M:%S")
            record = await self.ctx.read(create_chat_with_uploads, self.host.store, title, checked, graph=self.agent.value,
                                         backend=self.backend.value)
        except Exception as exc:
            self.message.object = _error(exc)
            return
        finally:
            self.create.disabled = False
        self.message.object = f"created {untrusted.text(record.name)}"
        go(f"?id={record.id}")
