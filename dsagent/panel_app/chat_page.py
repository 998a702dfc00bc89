"""The Chat page (``/chat?id=N`` or ``/chat?name=...``): talk with the agents about uploaded data.

Left, the chats (new with uploaded datasets, switch, rename, delete keeping its
artifacts unless asked). Right, the chat: a Panel ``ChatInterface`` whose
turns are built from each turn run's event stream (``chat_render.TurnView``),
the agent/model/approval choices, Stop, suggested first questions and "Save as
notebook". The chat's kernel and turns live in the server's ``ChatHost`` (its
own thread and loop); this page only sends it questions and decisions, and
reads the store through ``ctx.read``.
"""

from __future__ import annotations

import asyncio
import os
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, Callable
from urllib.parse import quote

import panel as pn
import param

from dsagent.panel_app import untrusted
from dsagent.panel_app.chat_data import save_chat_notebook, save_turn_notebook
from dsagent.panel_app.chat_host import ChatHost
from dsagent.panel_app.chat_render import CHAT_CSS, Toast, TurnView, chat_pane
from dsagent.panel_app.chat_sidebar import GRAPHS, ROW_CSS, ChatSidebar, chat_chip, go
from dsagent.panel_app.components import card, loading_placeholder, not_found_page
from dsagent.panel_app.layout import after_first_paint, page_frame
from dsagent.panel_app.widgets import Missing, Notice, current_user, preloaded, query_arg

if TYPE_CHECKING:
    from dsagent.artifacts.chats import ChatRecord
    from dsagent.panel_app.context import AppContext
    from dsagent.settings import Settings

__all__ = ["ChatView", "llm_problem", "page", "preload"]

SHOWN_TURNS = 30  # the newest turns a page shows; older ones are on the Runs page
FOLLOW_PX = 250  # the feed follows a growing turn while the user is this close to its end
# Inline icons for the ChatInterface's buttons: its default icon names make Bokeh fetch a web font from a
# CDN, which an offline dashboard cannot reach (and the page would log failed requests).
_SVG = ('<svg xmlns="http://www.w3.org/2000/svg" width="18" height="18" viewBox="0 0 24 24" fill="none" stroke="currentColor" '
        'stroke-width="2" stroke-linecap="round" stroke-linejoin="round"><path d="{}"/></svg>')
#: the feed fills the chat's box down to the input row. Panel keeps 75 px under the feed for an input area with tabs
#: and buttons; this one input row is 41 px, and the rest was an empty band above "Rename or delete this chat"
_FEED_CSS = ".chat-feed-log {max-height: none; flex: 1 1 0; min-height: 0}"
_BUTTON_ICONS = {"send": "M10 14l11 -11M21 3l-6.5 18a.55 .55 0 0 1 -1 0l-3.5 -7l-7 -3.5a.55 .55 0 0 1 0 -1l18 -6.5",
                 "stop": "M6 6h12v12h-12z", "rerun": "M4 12v-3a3 3 0 0 1 3 -3h13m-3 -3l3 3l-3 3",
                 "undo": "M9 14l-4 -4l4 -4M5 10h11a4 4 0 1 1 0 8h-1", "clear": "M4 7h16M10 11v6M14 11v6M5 7l1 12h12l1 -12",
                 "edit": "M4 20h4l10.5 -10.5a2.83 2.83 0 1 0 -4 -4l-10.5 10.5v4"}


class _Message(pn.chat.ChatMessage):
    """A ChatMessage with inline-SVG icons and no reaction icons (see ``_BUTTON_ICONS``: no CDN fetches)."""

    def __init__(self, object: Any = None, **params: Any) -> None:
        params["reaction_icons"] = {}
        params.setdefault("show_reaction_icons", False)
        params.setdefault("show_copy_icon", False)
        params.setdefault("show_edit_icon", False)
        super().__init__(object, **params)
        self.edit_icon.param.update(icon=_SVG.format(_BUTTON_ICONS["edit"]), active_icon=_SVG.format(_BUTTON_ICONS["stop"]))


class _Interface(pn.chat.ChatInterface):
    """The ChatInterface whose questions go to ``on_question`` (the page) instead of becoming ``ChatMessage``s:
    the page shows each turn, question included, as one light pane (``chat_render.TurnView``)."""

    _message_type = _Message

    def __init__(self, *, on_question: Callable[[str], None], **params: Any) -> None:
        super().__init__(**params)
        self._on_question = on_question

    def send(self, value: Any, user: str | None = None, avatar: Any = None, respond: bool = True, **params: Any) -> Any:
        if respond and isinstance(value, str):  # Enter in the input box, or a suggested question
            self._on_question(value)
            return None
        return super().send(value, user=user, avatar=avatar, respond=respond, **params)


def llm_problem(settings: "Settings") -> str | None:
    """Why the agents cannot answer (no endpoint configured), as the page says it; None when one is configured."""
    from dsagent.graphs.llm import DEFAULT_BASE_URL

    base = settings.llm_base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL
    if os.environ.get("OPENAI_API_KEY") or base.rstrip("/") != DEFAULT_BASE_URL:
        return None
    return ("<b>No LLM endpoint is configured</b>, so the agents cannot answer yet. Either set <code>OPENAI_API_KEY</code> "
            "(for api.openai.com), or run a local OpenAI-compatible server (vLLM, Ollama, llama.cpp, LM Studio) and point "
            "<code>OPENAI_BASE_URL</code> at it, e.g. <code>OPENAI_BASE_URL=http://localhost:11434/v1</code> (the "
            "<code>llm_base_url</code> setting works too); pick the model with <code>DSAGENT_LLM_MODEL</code>. Then restart "
            "<code>dsagent serve</code>. Everything else in the dashboard works without one.")


def endpoint_models(settings: "Settings") -> tuple[list[str], str]:
    """The endpoint's model list (the llm_model setting first), and a note when it could not be read (blocking)."""
    import openai

    from dsagent.graphs.llm import DEFAULT_BASE_URL

    default = settings.llm_model
    base = settings.llm_base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL
    try:
        client = openai.OpenAI(base_url=base, api_key=os.environ.get("OPENAI_API_KEY") or "unused", timeout=3.0, max_retries=0)
        names = sorted(m.id for m in client.models.list())
    except Exception as exc:  # an endpoint without /models, or unreachable: the setting still works
        return [default], f"the endpoint's model list could not be read ({type(exc).__name__}); using the llm_model setting"
    return list(dict.fromkeys([default, *names])), ""


def _find_chat(store: Any, ref: str, by_id: bool) -> "ChatRecord":
    return store.chats.get(int(ref) if by_id and ref.isdigit() else ref)


def preload(ctx: "AppContext", args: dict[str, str]) -> dict[str, Any] | None:
    """The chat and its newest turns with their events, read before the page is built: the feed comes with the
    page, so the browser opens it at the newest turn (a feed filled after load stayed at the first turn)."""
    ref = args.get("id") or args.get("name")
    if not ref:
        return None
    record = _find_chat(ctx.store, ref, "id" in args)
    turns = sorted(ctx.store.list_runs(parent_id=record.id, kind="agent", limit=SHOWN_TURNS).items, key=lambda r: r.id)
    return {"record": record, "turns": turns, "events": {r.id: ctx.store.events(r.id, limit=500) for r in turns}}


def page(ctx: "AppContext") -> Any:
    host: ChatHost = ctx.service("chat_host", lambda: ChatHost(ctx.settings))
    notice = Notice()
    problem = llm_problem(ctx.settings)
    ref = query_arg("id") or query_arg("name")
    first = preloaded()
    if isinstance(first, Missing):
        return not_found_page("/chat", "Chat", f"There is no chat {untrusted.text(ref)} in this workspace", "./chat", "All chats",
                              user=current_user())
    sidebar = ChatSidebar(ctx, host, notice, current=int(ref) if ref and ref.isdigit() and query_arg("id") else None, open=ref is None)
    pn.state.onload(sidebar.load)
    if ref is None:
        intro = chat_pane("<p>Pick a chat, or create one with your data files: then ask questions, look at the plots, ask "
                          "follow-ups that build on the variables already in the kernel, and save the conversation as a notebook.</p>")
        main: Any = pn.Column(*([problem_pane(problem)] if problem else []), notice.pane, card(intro), sizing_mode="stretch_width",
                              styles=_MAIN_STYLES, margin=0)
        title, actions = "Chat", []
    else:
        main = ChatView(ctx, host, notice, ref, current_user() or "anonymous", problem, sidebar, first)
        title, actions = (first["record"].name if first else "Chat"), main.actions()
    # wraps: narrower than the two side by side, the chats go above the chat (folded, see chat_sidebar)
    row = pn.FlexBox(sidebar, main, flex_wrap="wrap", align_items="flex-start", gap="0 16px", sizing_mode="stretch_width",
                     stylesheets=[ROW_CSS])
    return page_frame("/chat", title, row, actions=actions, user=current_user())


def problem_pane(problem: str) -> pn.pane.HTML:
    """The "no LLM endpoint" notice (the page's own HTML): its long example URL wraps on a phone."""
    return chat_pane(f"<div class='ds-alert' role='alert'>{problem}</div>", margin=(6, 0))


def _state_chip(answering: bool) -> str:
    return f"<span class='ds-chat-state'>{chat_chip('running' if answering else 'idle')}</span>"


_MAIN_STYLES = {"flex": "1 1 320px", "min-width": "0"}  # takes the row's rest, and may shrink below its content's width


class ChatView(pn.viewable.Viewer):
    """The right side: one chat's header, controls and feed, kept up to date from the store.

    Buttons call the ``on_*`` method of their name (``on_stop``, ``on_save_chat``, ``on_rename``, ``on_delete``);
    Enter calls ``on_question``. Following the turns is ``_follow`` -> ``_refresh`` -> ``_poll`` (a worker
    thread) -> ``_show`` (under the document lock)."""

    chat_id = param.Integer(default=None, allow_None=True, doc="the chat shown, once read from the store")
    answering = param.Boolean(default=False, doc="a turn of this chat runs in this server: Stop shows")
    sending = param.Boolean(default=False, doc="Enter was pressed and the turn's run does not exist yet")

    def __init__(self, ctx: "AppContext", host: ChatHost, notice: Notice, ref: str, who: str, problem: str | None,
                 sidebar: ChatSidebar, first: dict[str, Any] | None = None, **params: Any) -> None:
        super().__init__(**params)
        self.ctx, self.host, self.notice, self.ref, self.who, self.problem = ctx, host, notice, ref, who, problem
        self.sidebar, self._first = sidebar, first
        self.by_id = query_arg("id") is not None
        self.views: dict[int, TurnView] = {}
        self._spare: TurnView | None = None  # a hidden turn pane at the end of the feed, for the next question
        self.closed = False
        self.doc = pn.state.curdoc
        self._follower: "asyncio.Task[None] | None" = None
        self._woken: asyncio.Event | None = None
        self._refreshing = asyncio.Lock()  # one refresh at a time: the follower's, and those after a click
        self._again = False  # asked for while a refresh ran: run once more right after it
        self._loop: asyncio.AbstractEventLoop | None = None
        self.toast = Toast()
        self._build_widgets(ctx)
        if first is not None:  # the turns come with the page (``preload``): the feed opens at the newest
            self._start_with(first["record"], first["turns"], first["events"])
        pn.state.onload(self._load)

    def _build_widgets(self, ctx: "AppContext") -> None:
        import panel_material_ui as pmui

        self.title = chat_pane(loading_placeholder(1, "loading the chat"))
        self.kernel = chat_pane("")
        self.state_chip = pn.pane.HTML(_state_chip(False), stylesheets=[CHAT_CSS], margin=(0, 4))
        self.rename_to = pmui.TextInput(label="New name", placeholder="new name", width=220)
        self.rename = pmui.Button(label="Rename", variant="outlined", width=110)
        self.purge = pmui.Checkbox(label="also delete its runs and artifacts", value=False)
        self.delete = pmui.Button(label="Delete chat", color="error", variant="outlined", width=140)
        self.save = pn.widgets.Button(name="Save chat as notebook", button_type="primary", width=190, margin=0)
        self.message = chat_pane("", margin=(0, 10))  # empty most of the time: no band of margins under the chat
        self.agent = pmui.Select(label="Agent", options=GRAPHS, width=140)
        self.model = pmui.Select(label="Model", options=[ctx.settings.llm_model], value=ctx.settings.llm_model, width=220)
        self.model_note = chat_pane("", width=300)
        self.approve = pmui.Checkbox(label="approve each cell (Run / Edit / Reject)", value=False)
        self.stop = pn.widgets.Button(name="Stop", button_type="danger", width=90, visible=False, margin=0)
        self.suggest = pn.FlexBox(sizing_mode="stretch_width", align_items="center")
        # without an endpoint the chat is read-only: its history shows, the box says why it cannot ask
        ask = pn.chat.ChatAreaInput(placeholder="No LLM endpoint is configured (see above): this chat is read-only" if self.problem else
                                    "Ask about the data (Enter sends, Shift+Enter: new line)", disabled=bool(self.problem))
        self.feed = _Interface(on_question=self.on_question, user=self.who, show_rerun=False, show_undo=False, show_clear=False,
                               show_stop=False, show_button_name=False, sizing_mode="stretch_width", height=640, stylesheets=[_FEED_CSS],
                               button_properties={k: {"icon": _SVG.format(_BUTTON_ICONS[k])} for k in ("send", "stop", "rerun", "undo", "clear")},
                               widgets=[ask])
        self.rename.on_click(self.on_rename)
        self.delete.on_click(self.on_delete)
        self.save.on_click(self.on_save_chat)
        self.stop.on_click(self.on_stop)

    def actions(self) -> list[Any]:
        """The title row's: what the chat does now, Stop while a turn runs, Save as notebook; one group, so that on a
        narrow screen they go below the title together, lined up with it, rather than the button alone on a line."""
        return [pn.FlexBox(self.state_chip, self.stop, self.save, align_items="center", flex_wrap="nowrap", gap="8px", margin=0,
                           styles={"flex": "0 0 auto", "width": "auto"})]

    def __panel__(self) -> pn.Column:
        wrap = {"flex_wrap": "wrap", "sizing_mode": "stretch_width", "align_items": "center", "gap": "4px 12px"}  # as many lines as needed
        controls = pn.FlexBox(self.agent, self.model, self.approve, self.model_note, **wrap)
        manage = pn.Card(pn.FlexBox(self.rename_to, self.rename, **wrap), pn.FlexBox(self.delete, self.purge, **wrap),
                         title="Rename or delete this chat", collapsed=True, sizing_mode="stretch_width", margin=(6, 0))
        return pn.Column(
            *([problem_pane(self.problem)] if self.problem else []), self.notice.pane, self.title, self.kernel,
            # the Material UI controls join once the turns show (layout.after_first_paint)
            after_first_paint(controls, height=60), self.suggest, self.feed, self.message, after_first_paint(manage, height=48),
            self.toast, sizing_mode="stretch_width", styles=_MAIN_STYLES, margin=0)

    @param.depends("answering", watch=True)
    def _show_answering(self) -> None:
        """Stop while a turn runs here, and the title's chip; the chats list says "answering" then, and no more once it ended."""
        self.stop.visible = self.answering
        self._show_chip()
        if self.chat_id is not None:
            asyncio.ensure_future(self.sidebar.load_when(self.chat_id, "running" if self.answering else "idle"))

    def _show_chip(self) -> None:
        """The title's chip: answering from Enter on (the question is being started) until the turn ends, else idle."""
        chip = _state_chip(self.answering or self.sending)
        if self.state_chip.object != chip:
            self.state_chip.object = chip

    # -- loading and following -------------------------------------------------

    def _start_with(self, record: "ChatRecord", turns: list[Any], events: dict[int, list[Any]]) -> None:
        """The chat's header and turns (one change of the feed, not one per turn: a long chat loads in one go)."""
        self.chat_id = record.id
        self.agent.value = record.graph
        self._show_title(record)
        for run in turns:
            self._new_view(run.id, run.params.get("task", run.title or "")).apply(events.get(run.id, []))
        if not self.problem:
            self._spare = self._hidden_turn()
        self.feed.objects = [self.views[run.id].layout for run in turns] + ([self._spare.layout] if self._spare else [])

    async def _load(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._woken = asyncio.Event()

        async def work() -> None:
            record = self._first["record"] if self._first else await self.ctx.read(_find_chat, self.ctx.store, self.ref, self.by_id)
            self._watch(record.id)
            if self._first is None:  # the preload failed (a busy store): read now
                turns = await self.ctx.read(self._turn_runs_of, record.id)
                self._start_with(record, turns, {})
            # the browser has built the page by now (onload): open at the newest turn, also where the feed's own
            # first scroll came before a narrow layout had settled
            await self._in_doc(self.feed._chat_log.scroll_to_latest)
            if not self.views:
                questions = await self.ctx.read(self._suggestions, record)
                self.suggest.objects = [chat_pane("<span class='ds-label'>Try</span>", width=40, margin=(4, 4))] + [
                    self._suggest_button(q) for q in questions]
        if not await self.notice.guard(work):
            return
        if not self.problem:  # start the kernel (and replay) while the user reads and types, not after Enter
            self._opening = asyncio.ensure_future(self._open())
        await self._refresh()
        self._follower = asyncio.ensure_future(self._follow())
        if not self.problem:
            models, note = await self.ctx.read(endpoint_models, self.ctx.settings)
            self.model.options, self.model.value, self.model_note.object = models, models[0], f"<span class='ds-info'>{untrusted.text(note)}</span>"

    def _watch(self, chat_id: int) -> None:
        """This page follows the chat: the host wakes it on every step, and forgets it when the session ends."""
        session = pn.state.curdoc.session_context.id if pn.state.curdoc and pn.state.curdoc.session_context else str(id(self))
        self.host.attach(chat_id, session)
        self.host.watch(chat_id, self._wake)

        def gone(_ctx: Any) -> None:
            self.host.detach(chat_id, session)
            self.host.unwatch(chat_id, self._wake)
            self._close()
        pn.state.on_session_destroyed(gone)

    def _wake(self) -> None:
        """A turn of this chat wrote a step (called from the ChatHost's thread): the follower refreshes now."""
        loop, woken = self._loop, self._woken
        if loop is not None and woken is not None and not loop.is_closed():
            loop.call_soon_threadsafe(woken.set)

    async def _follow(self) -> None:
        """Refresh when woken by the host, else every 100 ms while a turn runs and every poll interval otherwise.

        A task of its own rather than a Bokeh periodic callback: Bokeh holds the document lock for the whole of
        an async callback (its store read included) and sends its changes only at the end, so every other
        update of the page (a wake-up, a click) queued behind each poll. Here only ``_in_doc`` takes the lock,
        for the moment the changes are made."""
        assert self._woken is not None
        while not self.closed:
            running = any(not v.done for v in self.views.values())
            try:
                await asyncio.wait_for(self._woken.wait(), (min(self.ctx.poll_ms, 100) if running else self.ctx.poll_ms) / 1000)
            except asyncio.TimeoutError:
                pass
            self._woken.clear()
            await self._refresh()

    def _close(self) -> None:
        self.closed = True
        if self._follower is not None:
            self._follower.cancel()

    async def _in_doc(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` under the document's lock as ONE update (one websocket message), from a task holding no lock."""
        doc = self.doc
        if doc is None or doc.session_context is None:
            return fn(*args)
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        def run() -> None:
            try:
                with pn.io.hold(doc):
                    result = fn(*args)
            except BaseException as exc:
                if not done.done():
                    done.set_exception(exc)
            else:
                if not done.done():
                    done.set_result(result)
        doc.add_next_tick_callback(run)
        return await done

    async def _open(self) -> None:
        try:
            await self.host.call(self.host.open(self.chat_id))
        except Exception as exc:  # e.g. open in `dsagent chat` elsewhere: say so; a question tries again
            self.message.object = f"<span class='ds-note-error'>{untrusted.text(str(exc))}</span>" + (
                f"<br><small>{untrusted.text(exc.hint)}</small>" if getattr(exc, "hint", "") else "")
        await self._refresh()

    def _turn_runs_of(self, chat_id: int) -> list[Any]:
        page_ = self.host.store.list_runs(parent_id=chat_id, kind="agent", limit=SHOWN_TURNS)
        return sorted(page_.items, key=lambda r: r.id)

    def _suggestions(self, record: "ChatRecord") -> list[str]:
        from dsagent.graphs.chat import chat_data_dir
        from dsagent.panel_app.chat_data import suggested_questions

        return suggested_questions(record, chat_data_dir(self.ctx.settings, record.id))

    def _suggest_button(self, question: str) -> Any:
        import panel_material_ui as pmui

        button = pmui.Button(label=question[:80], variant="outlined", size="small", margin=(4, 4))

        def ask(_: Any) -> None:
            self.feed.send(question, user=self.who, respond=True)
        button.on_click(ask)
        return button

    def _show_title(self, record: "ChatRecord") -> None:
        data = ", ".join(f"<code>{untrusted.text(d['param'])}</code> = {untrusted.text(d['path'])}" for d in record.datasets) or "no datasets"
        self.title.object = (f"<div class='ds-info'>chat {record.id} · {untrusted.text(record.graph)} agent · {untrusted.text(record.backend)} "
                             f"kernel · datasets: {data} · <a href='./run?id={record.id}'>its run</a></div>")

    def _new_view(self, run_id: int | None, task: str, asker: str = "") -> TurnView:
        view = TurnView(run_id, task, on_decide=self.on_decide, on_save=self.on_save_turn, asker=asker)
        if run_id is not None:
            self.views[run_id] = view
        return view

    def _hidden_turn(self) -> TurnView:
        return TurnView(None, "", on_decide=self.on_decide, on_save=self.on_save_turn, hidden=True)

    def _add_turn(self, view: TurnView) -> None:
        """A turn into the feed, before the hidden spare (which stays last, for the next question)."""
        spare = self._spare.layout if self._spare is not None else None
        if spare is not None and spare in self.feed.objects:
            self.feed.insert(self.feed.objects.index(spare), view.layout)
        else:
            self.feed.append(view.layout)

    def _make_spare(self) -> None:
        """Ready the next question's pane while the user reads: adding models to a page is what costs (Bokeh walks
        the whole document, the browser builds the new views), so Enter only changes properties of this one."""
        if self._spare is None and not self.problem and not self.closed:
            self._spare = self._hidden_turn()
            self.feed.append(self._spare.layout)

    def _poll(self, known: int, following: dict[int, int]) -> tuple[list[Any], dict[int, list[Any]]]:
        """New turns (runs after ``known``) and new events of the turns being followed, in one worker-thread hop.

        Through the ChatHost's store: the same DuckDB handle the turns write with, so a poll during a turn
        takes that handle's thread lock for a moment instead of making the writer let go of the file and
        attach it again (with a log replay) at every poll. While a turn is followed no other can start (one turn at a
        time per chat), so the runs are listed only between turns: the listing is most of a poll's cost."""
        store = self.host.store
        newest = [] if following else store.list_runs(parent_id=self.chat_id, kind="agent", limit=5).items
        new = sorted((r for r in newest if r.id > known), key=lambda r: r.id)
        events = {run_id: store.events(run_id, after=after, limit=500) for run_id, after in following.items()}
        events.update({r.id: store.events(r.id, limit=500) for r in new if r.id not in events})
        return new, events

    async def _refresh(self) -> None:
        if self.chat_id is None:
            return
        if self._refreshing.locked():  # one is under way: it runs once more when done, so no wake-up is lost
            self._again = True
            return
        async with self._refreshing:
            self._again = True
            while self._again:
                self._again = False
                await self._refresh_now()

    async def _refresh_now(self) -> None:

        async def work() -> None:
            known = max(self.views, default=0)
            following = {i: v.after for i, v in self.views.items() if not v.done}
            new, events = await self.ctx.read(self._poll, known, following)
            if await self._in_doc(self._show, new, events):  # a turn ended: the sidebar's turn counts changed
                await self._in_doc(self._make_spare)  # its own update, after the one showing the end
                await self.sidebar.load()
        await self.notice.guard(work)

    def _show(self, new: list[Any], events: dict[int, list[Any]]) -> bool:
        """Apply what ``_poll`` read (under the document lock); True when a turn ended."""
        if new or any(events.values()):
            self._follow_newest()
        if not self.sending:  # a turn this page is starting is bound to its view by _start_turn
            for run in new:
                if run.id not in self.views:
                    self._add_turn(self._new_view(run.id, run.params.get("task", run.title or "")))
        ended = False
        for run_id, batch in events.items():
            view = self.views.get(run_id)
            if batch and view is not None and not view.done:
                view.apply(batch)
                ended = ended or view.done
        running = any(not v.done for v in self.views.values())
        self.answering = running and self.host.running_run(self.chat_id) is not None
        self._show_chip()
        kernel = ("kernel: open in this server" if self.host.is_open(self.chat_id) else
                  "kernel: not started here (read-only without an LLM endpoint)" if self.problem else
                  "kernel: closed (the next question starts it and replays the earlier cells)")
        if self.kernel.object != (line := f"<div class='ds-info'>{kernel}</div>"):
            self.kernel.object = line
        return ended

    def _follow_newest(self) -> None:
        """Keep the newest turn in view as it grows, unless the user scrolled up to read: sent before the changes
        (the same patch), so the browser measures the distance to the end as the user left it."""
        # the ChatInterface's own auto-scroll acts only when a message is added; a turn grows in place
        self.feed._chat_log.scroll_to_latest(scroll_limit=FOLLOW_PX)

    # -- actions -------------------------------------------------------------------

    def on_question(self, text: str) -> None:
        """Enter (or a suggested question): the question and "starting…" show at once, then the turn starts."""
        if self.chat_id is None:
            return
        if self.problem:
            self.message.object = self.problem
            return
        if self.sending:  # (a turn still running is the host's to refuse: one whose answer shows may be finishing)
            self.message.object = "the previous question is still starting: ask again in a moment"
            return
        self.sending = True
        with pn.io.hold(self.doc):  # one websocket message
            self.suggest.visible = False
            view, self._spare = self._spare, None
            if view is None:  # no spare ready (asked again at once): a new pane
                view = self._new_view(None, text, asker=self.who)
                self.feed.append(view.layout)
            else:
                view.ask(text, self.who)
            self._show_chip()
            if not self.host.is_open(self.chat_id):
                self.kernel.object = "<div class='ds-info'>kernel: starting, replaying the chat's earlier cells…</div>"
            self.feed.scroll_to(self.feed.objects.index(view.layout))  # the new turn in view, even when the user had scrolled up
        # the patch showing the question is made (sent once this handler returns): now the turn, on the host's thread
        started = self.host.submit(self.host.start(self.chat_id, text, user=self.who, graph=self.agent.value, model=self.model.value,
                                                   approve=self.approve.value))
        asyncio.ensure_future(self._start_turn(view, started))

    async def _start_turn(self, view: TurnView, started: "Future[int]") -> None:
        try:
            run_id = await asyncio.wrap_future(started)
            view.bind(run_id)  # shown, with Stop, by the refresh below (one patch with the run's first events)
            self.views[run_id] = view
            self.message.object = ""
        except Exception as exc:  # not a turn: the question leaves the feed (hidden: the next question's pane), the message says why
            view.withdraw()
            if self._spare is None:
                self._spare = view
            elif view.layout in self.feed.objects:
                self.feed.remove(view.layout)
            self.message.object = f"<span class='ds-note-error'>{untrusted.text(str(exc))}</span>"
            hint = getattr(exc, "hint", "")
            if hint:
                self.message.object += f"<br><small>{untrusted.text(hint)}</small>"
        finally:
            self.sending = False
        await self._refresh()

    async def on_stop(self, _: Any) -> None:
        self.stop.disabled = True
        try:
            self.message.object = untrusted.text(await self.host.call(self.host.stop(self.chat_id, user=self.who)))
        except Exception as exc:
            self.message.object = f"<span class='ds-note-error'>{untrusted.text(str(exc))}</span>"
        finally:
            self.stop.disabled = False

    async def on_decide(self, run_id: int, action: str, code: str | None, reason: str) -> None:
        try:
            await self.host.call(self.host.decide(self.chat_id, action, code=code, reason=reason, user=self.who))
        except Exception as exc:
            self.message.object = f"<span class='ds-note-error'>{untrusted.text(str(exc))}</span>"

    async def on_save_chat(self, _: Any) -> None:
        await self._saved(save_chat_notebook, self.host.store, self.chat_id)

    async def on_save_turn(self, run_id: int) -> None:
        await self._saved(save_turn_notebook, self.host.store, self.chat_id, run_id)

    async def _saved(self, fn: Any, *args: Any) -> None:
        try:
            path = await self.ctx.read(fn, *args)
        except Exception as exc:
            self.message.object = f"<span class='ds-note-error'>{untrusted.text(str(exc))}</span>"
            return
        link = f"./notebook?path={quote(str(path), safe='')}"
        self.toast.show(f"Saved <a href='{untrusted.text(link)}'>{untrusted.text(path.name)}</a>: open it to run it with other "
                        "parameters, or find it on the <a href='./notebooks'>Notebooks</a> page")
        self.message.object = (f"saved <code>{untrusted.text(str(path))}</code>: it is on the <a href='./notebooks'>Notebooks</a> page, "
                               f"ready to run with other parameters (<code>dsagent run {untrusted.text(str(path))} -p data OTHER.csv</code>)")

    async def on_rename(self, _: Any) -> None:
        from dsagent.graphs.chat import rename_chat

        name = (self.rename_to.value_input or self.rename_to.value or "").strip()  # typed, even before Enter or leaving the box
        if not name:
            self.message.object = "type the new name first"
            return
        try:
            record = await self.ctx.read(rename_chat, self.host.store, self.chat_id, name)
        except Exception as exc:
            self.message.object = f"<span class='ds-note-error'>{untrusted.text(str(exc))}</span>"
            return
        self._show_title(record)
        self.message.object = f"renamed to {untrusted.text(record.name)}"
        go(f"?id={record.id}")  # the page's title is the chat's name

    async def on_delete(self, _: Any) -> None:
        from dsagent.graphs.chat import delete_chat

        if self.host.running_run(self.chat_id) is not None:
            self.message.object = "a turn is running: stop it first"
            return
        try:
            await self.host.call(self.host.close(self.chat_id, why=f"deleted by {self.who} from the dashboard"))
            await self.ctx.read(delete_chat, self.host.store, self.chat_id, purge=self.purge.value)
        except Exception as exc:
            self.message.object = f"<span class='ds-note-error'>{untrusted.text(str(exc))}</span>"
            return
        self._close()
        go("")
