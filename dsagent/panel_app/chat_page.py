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

import panel as pn

from dsagent.panel_app import untrusted
from dsagent.panel_app.chat_data import DATA_TYPES, check_uploads, create_chat_with_uploads, save_chat_notebook, save_turn_notebook
from dsagent.panel_app.chat_host import ChatHost
from dsagent.panel_app.chat_render import TurnView, chat_pane
from dsagent.panel_app.widgets import Notice, current_user, page_frame, query_arg

if TYPE_CHECKING:
    from dsagent.artifacts.chats import ChatRecord
    from dsagent.panel_app.context import AppContext
    from dsagent.settings import Settings

__all__ = ["llm_problem", "page"]

GRAPHS = ["analysis", "coding", "team"]
SHOWN_TURNS = 30
# Inline icons for the ChatInterface's buttons: its default icon names make Bokeh fetch a web font from a
# CDN, which an offline dashboard cannot reach (and the page would log failed requests).
_SVG = ('<svg xmlns="http://www.w3.org/2000/svg" width="18" height="18" viewBox="0 0 24 24" fill="none" stroke="currentColor" '
        'stroke-width="2" stroke-linecap="round" stroke-linejoin="round"><path d="{}"/></svg>')
_BUTTON_ICONS = {"send": "M10 14l11 -11M21 3l-6.5 18a.55 .55 0 0 1 -1 0l-3.5 -7l-7 -3.5a.55 .55 0 0 1 0 -1l18 -6.5",
                 "stop": "M6 6h12v12h-12z", "rerun": "M4 12v-3a3 3 0 0 1 3 -3h13m-3 -3l3 3l-3 3",
                 "undo": "M9 14l-4 -4l4 -4M5 10h11a4 4 0 1 1 0 8h-1", "clear": "M4 7h16M10 11v6M14 11v6M5 7l1 12h12l1 -12",
                 "edit": "M4 20h4l10.5 -10.5a2.83 2.83 0 1 0 -4 -4l-10.5 10.5v4"}  # the newest turns a page shows; older ones are on the Runs page


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


def _chat_list(store: Any, current: int | None, cursor: str | None) -> tuple[str, str | None]:
    page_ = store.chats.list(limit=30, cursor=cursor)
    rows = []
    for c in page_.items:
        state = " <small style='color:#198754'>(open)</small>" if c.status == "running" else ""
        style = "font-weight:bold" if c.id == current else ""
        rows.append(f'<div style="margin:3px 0"><a style="{style}" href="./chat?id={c.id}">{untrusted.text(c.name)}</a>{state}'
                    f'<br><small style="color:#666">{c.turns} turn(s) · {untrusted.text(c.graph)} · {untrusted.text(c.backend)}</small></div>')
    return "".join(rows) or "<i>no chats yet: create one below</i>", page_.next_cursor


def _find_chat(store: Any, ref: str, by_id: bool) -> "ChatRecord":
    return store.chats.get(int(ref) if by_id and ref.isdigit() else ref)


def page(ctx: "AppContext") -> pn.Column:
    host: ChatHost = ctx.service("chat_host", lambda: ChatHost(ctx.settings))
    who = current_user() or "anonymous"
    notice = Notice()
    problem = llm_problem(ctx.settings)
    ref = query_arg("id") or query_arg("name")
    sidebar, reload_sidebar = _sidebar(ctx, host, notice, ref)
    if ref is None:
        intro = chat_pane("<p>Pick a chat on the left, or create one with your data files: then ask questions, look at the "
                          "plots, ask follow-ups that build on the variables already in the kernel, and save the "
                          "conversation as a notebook.</p>")
        body: list[Any] = [notice.pane, intro]
        if problem:
            body.insert(0, pn.pane.Alert(problem, alert_type="warning", sizing_mode="stretch_width"))
        return page_frame("/chat", "Chat", pn.Row(sidebar, pn.Column(*body, sizing_mode="stretch_width"), sizing_mode="stretch_width"),
                          user=current_user())
    main = _ChatView(ctx, host, notice, ref, who, problem, reload_sidebar)
    return page_frame("/chat", "Chat", pn.Row(sidebar, main.layout, sizing_mode="stretch_width"), user=current_user())


def _sidebar(ctx: "AppContext", host: ChatHost, notice: Notice, ref: str | None) -> tuple[pn.Column, Callable[..., Any]]:
    """The chats column, and its ``load()`` (the page calls it again when a turn ends: the turn counts change)."""
    listing = chat_pane("loading…")
    more = pn.widgets.Button(name="Older chats", button_type="light", visible=False, width=120)
    cursor: dict[str, str | None] = {"next": None}
    name = pn.widgets.TextInput(name="Name", placeholder="e.g. sales q3 (default: date and time)", width=260)
    limit = ctx.settings.dashboard_upload_limit
    # FileDropper checks the size in the browser, so a file over the limit is refused before a byte is sent, and
    # sends the rest in chunks: one big websocket message (Bokeh's FileInput) closed the page's connection past ~60 MiB
    # (no type filter in the browser: Windows reports a .csv as application/vnd.ms-excel; the type is checked on Create)
    files = pn.widgets.FileDropper(multiple=True, max_file_size=str(limit), width=260, name="datasets", layout="compact")
    files.param.watch(lambda event: setattr(message, "object", _received(event.new)), "value")
    agent = pn.widgets.Select(name="Agent", options=GRAPHS, value="analysis", width=260)
    from dsagent.kernel_gateway.registry import backend_registry

    backends = backend_registry.names()
    backend = pn.widgets.Select(name="Kernel backend", options=backends,
                                value=ctx.settings.agent_backend if ctx.settings.agent_backend in backends else backends[0], width=260)
    create = pn.widgets.Button(name="Create chat", button_type="primary", width=140)
    message = chat_pane("", width=260)

    async def load(older: bool = False) -> None:
        current = None
        if ref is not None and ref.isdigit():
            current = int(ref)

        async def work() -> None:
            text, cursor["next"] = await ctx.read(_chat_list, ctx.store, current, cursor["next"] if older else None)
            listing.object = (listing.object + text) if older else text
            more.visible = cursor["next"] is not None
        await notice.guard(work)

    async def on_create(_: Any) -> None:
        from datetime import datetime

        create.disabled = True
        try:
            if uploading(files):
                message.object = "<span style='color:#dc3545'>a file is still uploading: create the chat when its bar is full</span>"
                return
            names = list(files.value)
            contents = [data.encode("utf-8") if isinstance(data, str) else data for data in files.value.values()]
            try:
                checked = check_uploads(names, contents, limit)  # refused before anything is written
            except Exception as exc:
                message.object = f"<span style='color:#dc3545'>{untrusted.text(str(exc))}</span>"
                return
            title = name.value.strip() or datetime.now().strftime("chat %Y-%m-%d %H:%M:%S")
            try:
                record = await ctx.read(create_chat_with_uploads, host.store, title, checked, graph=agent.value, backend=backend.value)
            except Exception as exc:
                message.object = f"<span style='color:#dc3545'>{untrusted.text(str(exc))}</span>"
                return
            message.object = f"created {untrusted.text(record.name)}"
            _go(f"?id={record.id}")
        finally:
            create.disabled = False

    async def on_more(_: Any) -> None:
        await load(older=True)

    more.on_click(on_more)
    create.on_click(on_create)
    pn.state.onload(load)
    # FilePond counts in powers of 1000: say the limit its way too, so its "Maximum file size is ..." matches the hint
    hint = chat_pane(f"<small>{', '.join(DATA_TYPES)}; up to {limit / 1e6:.1f} MB ({limit / 2**20:.0f} MiB) each</small>", width=260)
    return pn.Column(pn.pane.Markdown("### Chats"), listing, more, pn.pane.Markdown("### New chat"), name, files, hint, agent, backend,
                     create, message, width=290, styles={"border-right": "1px solid #eee"}), load


def _received(files: dict[str, Any]) -> str:
    listed = ", ".join(f"{untrusted.text(name)} ({len(data) / 1e6:.1f} MB)" for name, data in files.items())
    return f"<small>received: {listed}</small>" if listed else ""


def uploading(dropper: pn.widgets.FileDropper) -> bool:
    """Whether a file's chunks are still arriving (Panel keeps them in ``_file_buffer`` until the last one)."""
    return bool(getattr(dropper, "_file_buffer", None))


def _go(search: str) -> None:
    """Load this page again with another query (a new or deleted chat): the address stays bookmarkable."""
    location = pn.state.location
    if location is not None:
        location.reload = True
        location.search = search


class _ChatView:
    """The right side: one chat's header, controls and feed, kept up to date from the store."""

    def __init__(self, ctx: "AppContext", host: ChatHost, notice: Notice, ref: str, who: str, problem: str | None,
                 reload_sidebar: Callable[..., Any]) -> None:
        self.ctx, self.host, self.notice, self.ref, self.who, self.problem = ctx, host, notice, ref, who, problem
        self.reload_sidebar = reload_sidebar
        self.by_id = query_arg("id") is not None
        self.chat_id: int | None = None
        self.views: dict[int, TurnView] = {}
        self._spare: TurnView | None = None  # a hidden turn pane at the end of the feed, for the next question
        self.sending = False
        self.closed = False
        self.doc = pn.state.curdoc
        self._follower: "asyncio.Task[None] | None" = None
        self._woken: asyncio.Event | None = None
        self._refreshing = asyncio.Lock()  # one refresh at a time: the follower's, and those after a click
        self._again = False  # asked for while a refresh ran: run once more right after it
        self._loop: asyncio.AbstractEventLoop | None = None
        self.title = chat_pane("loading…")
        self.kernel = chat_pane("")
        self.rename_to = pn.widgets.TextInput(placeholder="new name", width=200)
        self.rename = pn.widgets.Button(name="Rename", width=90)
        self.purge = pn.widgets.Checkbox(name="also delete its runs and artifacts", value=False)
        self.delete = pn.widgets.Button(name="Delete chat", button_type="danger", width=110)
        self.save = pn.widgets.Button(name="Save chat as notebook", button_type="primary", width=190)
        self.message = chat_pane("")
        self.agent = pn.widgets.Select(name="Agent", options=GRAPHS, width=140)
        self.model = pn.widgets.Select(name="Model", options=[ctx.settings.llm_model], value=ctx.settings.llm_model, width=220)
        self.model_note = chat_pane("", width=300)
        self.approve = pn.widgets.Checkbox(name="approve each cell (Run / Edit / Reject)", value=False)
        self.stop = pn.widgets.Button(name="Stop", button_type="danger", width=90, visible=False)
        self.suggest = pn.Row(sizing_mode="stretch_width")
        # without an endpoint the chat is read-only: its history shows, the box says why it cannot ask
        ask = pn.chat.ChatAreaInput(placeholder="No LLM endpoint is configured (see above): this chat is read-only" if problem else
                                    "Ask about the data (Enter sends, Shift+Enter: new line)", disabled=bool(problem))
        self.feed = _Interface(on_question=self._on_question, user=who, show_rerun=False, show_undo=False, show_clear=False,
                               show_stop=False, show_button_name=False, sizing_mode="stretch_width", height=640,
                               button_properties={k: {"icon": _SVG.format(_BUTTON_ICONS[k])} for k in ("send", "stop", "rerun", "undo", "clear")},
                               widgets=[ask])
        self.rename.on_click(self._on_rename)
        self.delete.on_click(self._on_delete)
        self.save.on_click(self._on_save_chat)
        self.stop.on_click(self._on_stop)
        alert = [pn.pane.Alert(problem, alert_type="warning", sizing_mode="stretch_width")] if problem else []
        self.layout = pn.Column(
            *alert, notice.pane, self.title, self.kernel,
            pn.Row(self.agent, self.model, pn.Column(self.approve, self.model_note), self.stop, sizing_mode="stretch_width"),
            self.suggest, self.feed,
            pn.Row(self.save, self.rename_to, self.rename, self.delete, self.purge, sizing_mode="stretch_width"), self.message,
            sizing_mode="stretch_width")
        pn.state.onload(self._load)

    # -- loading and following -------------------------------------------------

    async def _load(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._woken = asyncio.Event()

        async def work() -> None:
            record = await self.ctx.read(_find_chat, self.ctx.store, self.ref, self.by_id)
            self.chat_id = record.id
            self.agent.value = record.graph
            self._show_title(record)
            session = pn.state.curdoc.session_context.id if pn.state.curdoc and pn.state.curdoc.session_context else str(id(self))
            self.host.attach(record.id, session)
            self.host.watch(record.id, self._wake)

            def gone(_ctx: Any, chat_id: int = record.id) -> None:
                self.host.detach(chat_id, session)
                self.host.unwatch(chat_id, self._wake)
                self._close()
            pn.state.on_session_destroyed(gone)
            turns = await self.ctx.read(self._turn_runs)
            for run in turns:
                self._new_view(run.id, run.params.get("task", run.title or ""))
            if not self.problem:
                self._spare = self._hidden_turn()
            # one change of the feed, not one per turn: a long chat loads in one go
            self.feed.objects = [self.views[run.id].layout for run in turns] + ([self._spare.layout] if self._spare else [])
            if not turns:
                questions = await self.ctx.read(self._suggestions, record)
                self.suggest.objects = [pn.pane.Markdown("**Try:**", margin=(8, 5))] + [self._suggest_button(q) for q in questions]
        if not await self.notice.guard(work):
            return
        if not self.problem:  # start the kernel (and replay) while the user reads and types, not after Enter
            self._opening = asyncio.ensure_future(self._open())
        await self._refresh()
        self._follower = asyncio.ensure_future(self._follow())
        if not self.problem:
            models, note = await self.ctx.read(endpoint_models, self.ctx.settings)
            self.model.options, self.model.value, self.model_note.object = models, models[0], f"<small>{untrusted.text(note)}</small>"

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
            self.message.object = f"<span style='color:#dc3545'>{untrusted.text(str(exc))}</span>" + (
                f"<br><small>{untrusted.text(exc.hint)}</small>" if getattr(exc, "hint", "") else "")
        await self._refresh()

    def _turn_runs(self) -> list[Any]:
        page_ = self.host.store.list_runs(parent_id=self.chat_id, kind="agent", limit=SHOWN_TURNS)
        return sorted(page_.items, key=lambda r: r.id)

    def _suggestions(self, record: "ChatRecord") -> list[str]:
        from dsagent.graphs.chat import chat_data_dir
        from dsagent.panel_app.chat_data import suggested_questions

        return suggested_questions(record, chat_data_dir(self.ctx.settings, record.id))

    def _suggest_button(self, question: str) -> pn.widgets.Button:
        button = pn.widgets.Button(name=question[:80], button_type="light", margin=(4, 4))

        def ask(_: Any) -> None:
            self.feed.send(question, user=self.who, respond=True)
        button.on_click(ask)
        return button

    def _show_title(self, record: "ChatRecord") -> None:
        data = ", ".join(f"<code>{untrusted.text(d['param'])}</code> = {untrusted.text(d['path'])}" for d in record.datasets) or "no datasets"
        self.title.object = (f"<h3 style='margin:4px 0'>{untrusted.text(record.name)}</h3><small>chat {record.id} · {record.graph} agent · "
                             f"{untrusted.text(record.backend)} kernel · datasets: {data} · <a href='./run?id={record.id}'>its run</a></small>")

    def _new_view(self, run_id: int | None, task: str, asker: str = "") -> TurnView:
        view = TurnView(run_id, task, on_decide=self._on_decide, on_save=self._on_save_turn, asker=asker)
        if run_id is not None:
            self.views[run_id] = view
        return view

    def _hidden_turn(self) -> TurnView:
        return TurnView(None, "", on_decide=self._on_decide, on_save=self._on_save_turn, hidden=True)

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
                await self.reload_sidebar()
        await self.notice.guard(work)

    def _show(self, new: list[Any], events: dict[int, list[Any]]) -> bool:
        """Apply what ``_poll`` read (under the document lock); True when a turn ended."""
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
        self.stop.visible = running and self.host.running_run(self.chat_id) is not None
        self.kernel.object = ("<small>kernel: open in this server</small>" if self.host.is_open(self.chat_id) else
                              "<small>kernel: not started here (read-only without an LLM endpoint)</small>" if self.problem else
                              "<small>kernel: closed (the next question starts it and replays the earlier cells)</small>")
        return ended

    # -- actions -------------------------------------------------------------------

    def _on_question(self, text: str) -> None:
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
            if not self.host.is_open(self.chat_id):
                self.kernel.object = "<small>kernel: starting, replaying the chat's earlier cells…</small>"
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
            self.message.object = f"<span style='color:#dc3545'>{untrusted.text(str(exc))}</span>"
            hint = getattr(exc, "hint", "")
            if hint:
                self.message.object += f"<br><small>{untrusted.text(hint)}</small>"
        finally:
            self.sending = False
        await self._refresh()

    async def _on_stop(self, _: Any) -> None:
        self.stop.disabled = True
        try:
            self.message.object = untrusted.text(await self.host.call(self.host.stop(self.chat_id, user=self.who)))
        except Exception as exc:
            self.message.object = f"<span style='color:#dc3545'>{untrusted.text(str(exc))}</span>"
        finally:
            self.stop.disabled = False

    async def _on_decide(self, run_id: int, action: str, code: str | None, reason: str) -> None:
        try:
            await self.host.call(self.host.decide(self.chat_id, action, code=code, reason=reason, user=self.who))
        except Exception as exc:
            self.message.object = f"<span style='color:#dc3545'>{untrusted.text(str(exc))}</span>"

    async def _on_save_chat(self, _: Any) -> None:
        await self._saved(save_chat_notebook, self.host.store, self.chat_id)

    async def _on_save_turn(self, run_id: int) -> None:
        await self._saved(save_turn_notebook, self.host.store, self.chat_id, run_id)

    async def _saved(self, fn: Any, *args: Any) -> None:
        try:
            path = await self.ctx.read(fn, *args)
        except Exception as exc:
            self.message.object = f"<span style='color:#dc3545'>{untrusted.text(str(exc))}</span>"
            return
        self.message.object = (f"saved <code>{untrusted.text(str(path))}</code>: it is on the <a href='./notebooks'>Notebooks</a> page, "
                               f"ready to run with other parameters (<code>dsagent run {untrusted.text(str(path))} -p data OTHER.csv</code>)")

    async def _on_rename(self, _: Any) -> None:
        from dsagent.graphs.chat import rename_chat

        if not self.rename_to.value.strip():
            self.message.object = "type the new name first"
            return
        try:
            record = await self.ctx.read(rename_chat, self.host.store, self.chat_id, self.rename_to.value)
        except Exception as exc:
            self.message.object = f"<span style='color:#dc3545'>{untrusted.text(str(exc))}</span>"
            return
        self._show_title(record)
        self.message.object = f"renamed to {untrusted.text(record.name)}"

    async def _on_delete(self, _: Any) -> None:
        from dsagent.graphs.chat import delete_chat

        if self.host.running_run(self.chat_id) is not None:
            self.message.object = "a turn is running: stop it first"
            return
        try:
            await self.host.call(self.host.close(self.chat_id, why=f"deleted by {self.who} from the dashboard"))
            await self.ctx.read(delete_chat, self.host.store, self.chat_id, purge=self.purge.value)
        except Exception as exc:
            self.message.object = f"<span style='color:#dc3545'>{untrusted.text(str(exc))}</span>"
            return
        self._close()
        _go("")
