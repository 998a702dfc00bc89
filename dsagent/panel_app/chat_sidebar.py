"""The Chat page's left column: the chats (a page at a time) and the "New chat" form with its uploads.

Beside the chat from 900 px up; narrower, it sits above the chat folded to one "Chats" button (the page opens at the
chat, not at a long form), unless no chat is open. The folding is CSS on the column's own class (``ds-open``), so the
right state shows at first paint whatever the width; the button only flips the class.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import TYPE_CHECKING, Any

import panel as pn
import panel_material_ui as pmui
import param

from dsagent.panel_app import untrusted
from dsagent.panel_app.chat_data import DATA_TYPES, check_uploads, create_chat_with_uploads
from dsagent.panel_app.chat_render import chat_pane
from dsagent.panel_app.components import icon, loading_placeholder, status_chip
from dsagent.panel_app.layout import after_first_paint

if TYPE_CHECKING:
    from dsagent.panel_app.chat_host import ChatHost
    from dsagent.panel_app.context import AppContext
    from dsagent.panel_app.widgets import Notice

__all__ = ["ChatSidebar", "GRAPHS", "chat_chip", "go", "uploading"]

GRAPHS = ["analysis", "coding", "team"]
CHATS_PER_PAGE = 30
STATUS_WAIT_SECONDS = 5.0  # how long the list waits for a turn's start or end to reach the store
SIDEBAR_WIDTH = 290
NARROW_PX = 900  # below this the column sits above the chat, folded

_CSS = f"""
:host {{border: 1px solid var(--ds-border); border-radius: 8px; background: var(--ds-surface); padding: 4px 14px 12px 14px;
  box-sizing: border-box}}
@media (min-width: {NARROW_PX}px) {{ .ds-chats-toggle {{display: none !important}} }}
@media (max-width: {NARROW_PX - 1}px) {{ :host(:not(.ds-open)) .ds-chats-body {{display: none !important}} }}
"""
#: the flex row of the page: the column takes the whole width once it wraps above the chat
ROW_CSS = f"@media (max-width: {NARROW_PX - 1}px) {{ .ds-chats {{flex: 1 1 100% !important; width: auto !important; max-width: none !important}} }}"
_LIST_CSS = """
.ds-chat-list {list-style: none; margin: 0; padding: 0; display: flex; flex-direction: column; gap: 2px}
.ds-chat-list li {padding: 6px 8px; border-radius: 6px; min-width: 0}
.ds-chat-list li.ds-current {background: color-mix(in srgb, var(--ds-primary) 12%, transparent)}
.ds-chat-list a {font-weight: 500; text-decoration: none; color: var(--ds-text); overflow-wrap: anywhere}
.ds-chat-list li.ds-current a {color: var(--ds-primary)}
.ds-chat-list a:hover {text-decoration: underline}
.ds-chat-line {display: flex; flex-wrap: wrap; align-items: center; gap: 2px 8px; font-size: 0.8rem; color: var(--ds-muted); margin-top: 2px}
.ds-section {font-size: 0.8rem; font-weight: 600; letter-spacing: .06em; text-transform: uppercase; color: var(--ds-muted); margin: 10px 0 4px 0}
"""


def chat_chip(status: str | None) -> str:
    """What a chat does now as a chip: "answering" while a turn runs, "idle" between turns (the run chips' colours)."""
    if status == "running":
        return f"<span class='ds-chip ds-chip-running' title='a turn is running'>{icon('running', 14, spin=True)}answering</span>"
    if status in (None, "idle"):
        return f"<span class='ds-chip ds-chip-idle' title='no turn is running'>{icon('idle', 14)}idle</span>"
    return status_chip(status)  # failed (a holder that died mid-turn), cancelled (deleted, its runs kept)


def chat_list_html(store: Any, current: int | None, cursor: str | None) -> tuple[str, str | None, int]:
    """One page of the chats as HTML (what each does now: answering or idle, its kernel open or not), the next cursor, and
    how many are listed."""
    page_ = store.chats.list(limit=CHATS_PER_PAGE, cursor=cursor)
    rows = []
    for c in page_.items:
        current_class = " class='ds-current'" if c.id == current else ""
        turns = f"{c.turns} turn" + ("" if c.turns == 1 else "s")
        kernel = "<span>kernel open</span>" if c.held else ""
        rows.append(f"<li{current_class}><a href='./chat?id={c.id}'{' aria-current=page' if c.id == current else ''}>{untrusted.text(c.name)}</a>"
                    f"<div class='ds-chat-line'>{chat_chip(c.status)}<span>{turns} · {untrusted.text(c.graph)} · {untrusted.text(c.backend)}"
                    f"</span>{kernel}</div></li>")
    if not rows and cursor is None:
        return "<p class='ds-muted'>No chats yet: create one below with your data files.</p>", None, 0
    return f"<ul class='ds-chat-list'>{''.join(rows)}</ul>", page_.next_cursor, len(rows)


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
    return f"<span class='ds-note-error'>{untrusted.text(str(exc))}</span>"


class ChatSidebar(pn.viewable.Viewer):
    """The chats column; ``load()`` reads the list again (the page calls it when a turn ends: the counts change).
    Its buttons: ``on_toggle`` (fold, on a narrow screen), ``on_older``, ``on_create``."""

    current = param.Integer(default=None, allow_None=True, doc="the chat the page shows (marked in the list)")
    cursor = param.String(default=None, allow_None=True, doc="where the next page of older chats starts")
    open = param.Boolean(default=False, doc="unfolded on a narrow screen (always shown on a wide one)")

    def __init__(self, ctx: "AppContext", host: "ChatHost", notice: "Notice", **params: Any) -> None:
        super().__init__(**params)
        self.ctx, self.host, self.notice = ctx, host, notice
        self.limit = ctx.settings.dashboard_upload_limit
        self.listing = chat_pane(loading_placeholder(3, "loading the chats"), stylesheets=[_LIST_CSS])
        self.older = pn.widgets.Button(name="Older chats", button_style="outline", visible=False, width=120)
        self.toggle = pn.widgets.Button(name=self._toggle_name(), button_style="outline", sizing_mode="stretch_width",
                                        css_classes=["ds-chats-toggle"])
        self.chat_name = pmui.TextInput(label="Name", placeholder="e.g. sales q3 (default: date and time)", sizing_mode="stretch_width")
        # FileDropper checks the size in the browser, so a file over the limit is refused before a byte is sent, and sends
        # the rest in chunks: one big websocket message (Bokeh's FileInput) closed the page's connection past ~60 MiB (no type
        # filter in the browser: Windows reports a .csv as application/vnd.ms-excel; the type is checked on Create)
        self.files = pn.widgets.FileDropper(multiple=True, max_file_size=str(self.limit), sizing_mode="stretch_width", name="datasets",
                                            layout="compact")
        self.agent = pmui.Select(label="Agent", options=GRAPHS, value="analysis", sizing_mode="stretch_width")
        self.backend = self._backend_select(ctx)
        self.create = pmui.Button(label="Create chat", variant="contained", sizing_mode="stretch_width")
        self.message = chat_pane("")
        self.files.param.watch(self._on_files, "value")
        self.older.on_click(self.on_older)
        self.toggle.on_click(self.on_toggle)
        self.create.on_click(self.on_create)

    @staticmethod
    def _backend_select(ctx: "AppContext") -> pmui.Select:
        from dsagent.kernel_gateway.registry import backend_registry

        names = backend_registry.names()
        default = ctx.settings.agent_backend if ctx.settings.agent_backend in names else names[0]
        return pmui.Select(label="Kernel backend", options=names, value=default, sizing_mode="stretch_width")

    def __panel__(self) -> pn.Column:
        # FilePond counts in powers of 1000: say the limit its way too, so its "Maximum file size is ..." matches the hint
        hint = chat_pane(f"<span class='ds-info'>{', '.join(DATA_TYPES)}; up to {self.limit / 1e6:.1f} MB ({self.limit / 2**20:.0f} MiB) each</span>")
        # the Material UI fields join after the first paint; the file dropper (Panel's) is there at once: its script loads
        # only with a page whose first document has one
        body = pn.Column(self.listing, self.older, chat_pane("<h2 class='ds-section'>New chat</h2>", stylesheets=[_LIST_CSS]),
                         after_first_paint(self.chat_name, height=56), self.files, hint,
                         after_first_paint(self.agent, self.backend, self.create, height=170), self.message,
                         sizing_mode="stretch_width", css_classes=["ds-chats-body"], margin=0)
        self._column = pn.Column(chat_pane("<h2 class='ds-section'>Chats</h2>", stylesheets=[_LIST_CSS]), self.toggle, body,
                                 width=SIDEBAR_WIDTH, css_classes=self._classes(), stylesheets=[_CSS], margin=(6, 0))
        return self._column

    def _classes(self) -> list[str]:
        return ["ds-chats", "ds-open"] if self.open else ["ds-chats"]

    def _toggle_name(self) -> str:
        return "Hide the chats" if self.open else "Show the chats"

    @param.depends("open", watch=True)
    def _fold(self) -> None:
        self.toggle.name = self._toggle_name()
        if getattr(self, "_column", None) is not None:
            self._column.css_classes = self._classes()

    def on_toggle(self, _: Any = None) -> None:
        self.open = not self.open

    async def load(self, older: bool = False) -> None:
        async def work() -> None:
            text, self.cursor, _ = await self.ctx.read(chat_list_html, self.ctx.store, self.current, self.cursor if older else None)
            self.listing.object = (self.listing.object + text) if older else text
            self.older.visible = self.cursor is not None
        await self.notice.guard(work)

    async def load_when(self, chat_id: int, status: str, within: float = STATUS_WAIT_SECONDS) -> None:
        """``load`` once the chat's status in the store is ``status`` (or ``within`` seconds passed): a chat's page knows
        a turn started before the store says so (the chat's status is written beside the turn, not before its first
        step), and a list read in between would say "idle" until the turn ended."""
        end = asyncio.get_running_loop().time() + within
        while asyncio.get_running_loop().time() < end:
            try:
                if (await self.ctx.read(self.ctx.store.chats.get, chat_id)).status == status:
                    break
            except Exception:
                break  # gone or unreadable: load() says what it can
            await asyncio.sleep(0.1)
        await self.load()

    async def on_older(self, _: Any = None) -> None:
        await self.load(older=True)

    def _on_files(self, event: Any) -> None:
        listed = ", ".join(f"{untrusted.text(name)} ({len(data) / 1e6:.1f} MB)" for name, data in event.new.items())
        self.message.object = f"<small>received: {listed}</small>" if listed else ""

    async def on_create(self, _: Any = None) -> None:
        """Check the uploads (nothing is written when one is refused), create the chat, go to it."""
        if uploading(self.files):
            self.message.object = "<span class='ds-note-error'>a file is still uploading: create the chat when its bar is full</span>"
            return
        self.create.disabled = True
        try:
            contents = [data.encode("utf-8") if isinstance(data, str) else data for data in self.files.value.values()]
            checked = check_uploads(list(self.files.value), contents, self.limit)
            title = (self.chat_name.value_input or self.chat_name.value or "").strip() or datetime.now().strftime("chat %Y-%m-%d %H:%M:%S")
            record = await self.ctx.read(create_chat_with_uploads, self.host.store, title, checked, graph=self.agent.value,
                                         backend=self.backend.value)
        except Exception as exc:
            self.message.object = _error(exc)
            return
        finally:
            self.create.disabled = False
        self.message.object = f"created {untrusted.text(record.name)}"
        go(f"?id={record.id}")
