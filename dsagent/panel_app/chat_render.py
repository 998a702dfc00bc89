"""One chat turn on the Chat page, built from its run's events as they arrive.

The page never asks the running agent what it is doing: it reads the turn's
event stream (``store.events(run_id, after=...)``) and ``TurnView.apply``
turns each event into a piece of the message (plan, a card per code cell,
review, delegation, streamed tokens, the answer and its artifacts). So the
page that asked, a reloaded page and a second browser all show the same run.
Plots are ``<img>`` tags on the artifact REST route, never inlined base64.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any, Callable

import panel as pn
import param

from dsagent.artifacts.schema import TERMINAL_STATUSES
from dsagent.panel_app import untrusted
from dsagent.panel_app.components import icon
from dsagent.panel_app.widgets import CSS, run_link, status_badge

if TYPE_CHECKING:
    from dsagent.artifacts.models import Event

__all__ = ["Toast", "TurnView", "chat_pane", "outputs_html"]

_SPINNER = icon("running", 16, spin=True)
_OUTPUT_CHARS = 4000  # of a cell's text output a card shows; the full output is in the run's notebook
_TOKENS_SHOWN = 1500

CHAT_CSS = CSS + """
.ds-out {white-space: pre-wrap; overflow-wrap: anywhere; font-size: 0.85em; background: var(--ds-code-bg); color: var(--ds-text);
         padding: 6px 8px; margin: 4px 0; max-height: 320px; overflow: auto; border-radius: 4px}
.ds-err {white-space: pre-wrap; overflow-wrap: anywhere; font-size: 0.85em; padding: 6px 8px; margin: 4px 0; border-radius: 4px;
         color: var(--ds-failed); background: color-mix(in srgb, var(--ds-failed) 12%, var(--ds-surface))}
.ds-plot {max-width: 100%; max-height: 420px; border: 1px solid var(--ds-border); border-radius: 4px; background: #fff; margin: 4px 0}
.ds-step {color: var(--ds-muted); font-size: 0.9em; margin: 4px 0; overflow-wrap: anywhere}
.ds-code {background: #263238; color: #eceff1; padding: 6px 8px; font-size: 0.85em; white-space: pre-wrap; overflow-wrap: anywhere;
          margin: 4px 0; border-radius: 4px}
.ds-code code {background: none; padding: 0; color: inherit; font-size: inherit}
.ds-cell {border: 1px solid var(--ds-border); border-radius: 6px; margin: 6px 0; padding: 0 8px 4px 8px; min-width: 0}
.ds-cell summary {font-weight: 600; padding: 5px 0; cursor: pointer; overflow-wrap: anywhere}
.ds-ok summary {color: var(--ds-succeeded)} .ds-error summary {color: var(--ds-failed)} .ds-running summary {color: var(--ds-running)}
.ds-setup summary {color: var(--ds-muted)}
.ds-review {background: color-mix(in srgb, var(--ds-text) 5%, var(--ds-surface)); padding: 2px 10px; margin: 6px 0; border-radius: 6px;
            border-left: 3px solid var(--ds-idle)}
.ds-md {overflow-wrap: anywhere}
.ds-md p {margin: 4px 0}
.ds-md > b, .ds-label {display: block; font-size: 0.75rem; font-weight: 600; letter-spacing: .06em; text-transform: uppercase;
  color: var(--ds-muted); margin: 8px 0 2px 0}
.ds-ask {background: color-mix(in srgb, var(--ds-primary) 13%, var(--ds-surface)); color: var(--ds-text); border-radius: 12px 12px 12px 4px;
         padding: 8px 12px; margin: 2px 0 8px 0; white-space: pre-wrap; overflow-wrap: anywhere}
.ds-ask b {color: var(--ds-primary)}
.ds-turn-head {display: flex; flex-wrap: wrap; align-items: center; gap: 4px 8px; color: var(--ds-muted); font-size: 0.85rem}
.ds-wait {color: var(--ds-running); font-size: 0.9em; display: flex; align-items: center; gap: 6px; margin: 6px 0}
.ds-alert {border-radius: 8px; padding: 10px 14px; overflow-wrap: anywhere; color: var(--ds-text);
           background: color-mix(in srgb, var(--ds-unverified) 12%, var(--ds-surface));
           border: 1px solid color-mix(in srgb, var(--ds-unverified) 45%, transparent)}
.ds-alert code {word-break: break-all}
.ds-note-error {color: var(--ds-failed)}
.ds-info {color: var(--ds-muted); font-size: 0.85rem; overflow-wrap: anywhere}
"""

#: a turn's look: a card of the feed (a Column with inline styles, like ``components.card``)
TURN_STYLES = {"background": "var(--ds-surface, #fff)", "color": "var(--ds-text, inherit)", "border": "1px solid var(--ds-border, rgba(0,0,0,.12))",
               "border-radius": "8px", "padding": "8px 12px", "box-sizing": "border-box", "min-width": "0"}


def chat_pane(text: str = "", **kwargs: Any) -> pn.pane.HTML:
    """An HTML pane that knows the dashboard's and the chat's classes (panes live in their own shadow DOM)."""
    kwargs.setdefault("sizing_mode", "stretch_width" if "width" not in kwargs else None)
    kwargs["stylesheets"] = [CHAT_CSS, *kwargs.get("stylesheets", [])]
    return pn.pane.HTML(text, **kwargs)


def _pre(text: str, cls: str = "ds-out") -> str:
    if len(text) > _OUTPUT_CHARS:
        text = text[:_OUTPUT_CHARS] + f"\n… ({len(text) - _OUTPUT_CHARS} more characters in the run's notebook)"
    return f"<pre class='{cls}'>{untrusted.text(text)}</pre>"


def outputs_html(outputs: list[dict[str, Any]], artifacts: list[dict[str, Any]]) -> str:
    """A cell's outputs as HTML: text as <pre>, errors in red, images as <img> on the artifact route."""
    parts = []
    for out in outputs:
        kind = out.get("output_type")
        if kind == "stream":
            text = out.get("text", "")
            parts.append(_pre("".join(text) if isinstance(text, list) else text, "ds-err" if out.get("name") == "stderr" else "ds-out"))
        elif kind in ("execute_result", "display_data"):
            data = out.get("data", {})
            if any(m.startswith("image/") for m in data):
                continue  # shown from its artifact below (not as base64 in the page)
            text = data.get("text/plain", "")
            if text:
                parts.append(_pre("".join(text) if isinstance(text, list) else text))
        elif kind == "error":
            parts.append(_pre(f"{out.get('ename', 'Error')}: {out.get('evalue', '')}", "ds-err"))
    for ref in artifacts:
        if ref.get("kind") == "image":
            parts.append(f'<a href="./artifact?id={int(ref["id"])}"><img class="ds-plot" loading="lazy" '
                         f'src="./api/artifacts/{int(ref["id"])}" alt="{untrusted.text(ref.get("name", ""))}"></a>')
    return "".join(parts)


def _merged_streams(outputs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Consecutive stream outputs of one name as one (a line per event would be a <pre> each)."""
    merged: list[dict[str, Any]] = []
    for out in outputs:
        if merged and merged[-1]["name"] == out["name"]:
            merged[-1] = {**merged[-1], "text": merged[-1]["text"] + out["text"]}
        else:
            merged.append(out)
    return merged


def _code_html(code: str) -> str:
    return f"<pre class='ds-code'><code>{untrusted.text(code)}</code></pre>"


class TurnView:
    """One turn of the chat: the question, then the assistant's steps; ``apply(events)`` adds what the new events say.

    The question and the steps are HTML blocks in ONE pane (cells as ``<details>``), re-rendered when events
    arrive: a turn is two or three Bokeh models, not the sixty of two ``ChatMessage``s (each has an avatar,
    name, timestamp, icons...). Adding a model to the page makes Bokeh walk every model of the document, so a
    light turn keeps Enter-to-first-step and the per-step cost flat as the chat grows. Only a waiting
    approval and the finished turn's "Save" button are widgets, added to the turn when needed.

    A turn the page itself asks starts without a run (``run_id`` None: the question and "starting…" show at
    once, before any store or agent work); ``bind(run_id)`` attaches it to its run once that exists. The page
    keeps one such turn ready, hidden (``hidden=True``), at the end of the feed: ``ask(task)`` shows it by
    changing properties only, so Enter adds no model to the page."""

    def __init__(self, run_id: int | None, task: str, *, on_decide: Callable[[int, str, str | None, str], Any],
                 on_save: Callable[[int], Any], asker: str = "", hidden: bool = False) -> None:
        self.run_id = run_id
        self.task = task
        self.after = 0  # last event seq shown
        self.done = False
        self.status = "running"
        self._on_decide, self._on_save = on_decide, on_save
        self.steps = chat_pane("")
        # an HTML pane fed sanitized Markdown: Panel's Markdown pane would pass raw HTML in the model's tokens through
        self.tokens = chat_pane("", visible=False, styles={"color": "var(--ds-muted)"})
        # the finished turn's line and "Save" button exist from the start, hidden: showing them changes a property, while
        # adding models at the end would make Bokeh walk the whole document again
        self.footer_text = chat_pane("")
        # an outlined button: the "light" type drew no edge on the page's white, so it read as plain text
        save = pn.widgets.Button(name="Save turn as notebook", button_type="primary", button_style="outline", width=190)
        save.on_click(partial(self._save))
        self.footer = pn.Row(self.footer_text, save, sizing_mode="stretch_width", visible=False)
        self.layout = pn.Column(self.steps, self.tokens, self.footer, sizing_mode="stretch_width", css_classes=["ds-turn"],
                                visible=not hidden, styles=TURN_STYLES, margin=(6, 2))
        self._blocks: list[str] = []
        self._cells: dict[int, int] = {}  # cell number -> index of its block
        self._running_code: dict[int, str] = {}  # cells started and not yet ended: their code
        self._streamed: dict[int, list[dict[str, Any]]] = {}  # what those cells printed so far (``cell_output`` events)
        self._artifacts: list[dict[str, Any]] = []
        self._approval: dict[str, Any] | None = None
        self._token_text = ""
        self._asker = asker
        self._launched_by = ""
        self._render()

    def ask(self, task: str, asker: str) -> None:
        """A hidden turn (made ahead of time) takes the question and shows it."""
        self.task, self._asker = task, asker
        self._render()
        self.layout.visible = True

    def withdraw(self) -> None:
        """The question did not become a turn: hidden again, ready for the next one."""
        self.layout.visible = False
        self.task = ""

    def bind(self, run_id: int) -> None:
        """The turn's run exists now: follow its events. Shown with its first events (its creation wrote a
        ``status`` one), not on its own: every document patch costs the browser a style and layout pass."""
        self.run_id = run_id

    # -- events -----------------------------------------------------------------

    def apply(self, events: list["Event"]) -> None:
        changed = False
        for event in events:
            if event.seq <= self.after:  # two overlapping reads of the same stretch: show it once
                continue
            handler = getattr(self, "_on_" + event.type, None)
            if handler is not None:
                handler(event.payload)
                changed = True
            self.after = max(self.after, event.seq)
        if changed:
            self._render()

    def _render(self) -> None:
        ask = f"<div class='ds-ask'><b>{untrusted.text(self._asker or 'you')}</b>: {untrusted.text(self.task)}</div>"
        if self.run_id is None:
            self.steps.object = ask + f"<div class='ds-wait'>{_SPINNER}starting the turn…</div>"
            return
        by = f"<span>{self._launched_by}</span>" if self._launched_by else ""
        working = "" if self.done or self._blocks else f"<div class='ds-wait'>{_SPINNER}working: the agent is planning…</div>"
        header = f"<div class='ds-turn-head'>{status_badge(self.status)}<span>turn run {run_link(self.run_id)}</span>{by}</div>"
        self.steps.object = ask + header + "".join(self._blocks) + working

    def _add(self, block: str) -> None:
        self._blocks.append(block)

    def _note(self, text: str) -> None:
        self._add(f"<div class='ds-step'>{text}</div>")

    def _on_launched(self, p: dict[str, Any]) -> None:
        self._asker = str(p.get("user") or self._asker)
        self._launched_by = f"asked by {untrusted.text(str(p.get('user')))} via {untrusted.text(str(p.get('via')))}"

    def _on_agent_plan(self, p: dict[str, Any]) -> None:
        self._clear_tokens()
        self._add(f"<div class='ds-md'><b>Plan</b>{untrusted.markdown(p.get('plan', ''))}</div>")

    def _on_agent_delegate(self, p: dict[str, Any]) -> None:
        self._note(f"<b>delegated: {untrusted.text(str(p.get('role', 'lead')))} → {untrusted.text(str(p.get('to')))}</b>: "
                   f"{untrusted.text(str(p.get('reason', '')))}")

    def _on_agent_profile(self, p: dict[str, Any]) -> None:
        if p.get("datasets"):
            self._note(f"profiled {len(p['datasets'])} dataset(s) ({untrusted.text(str(p.get('status')))})")

    def _on_agent_tokens(self, p: dict[str, Any]) -> None:
        self._token_text = (self._token_text + p.get("text", ""))[-_TOKENS_SHOWN:]
        self.tokens.object = untrusted.markdown(f"*{untrusted.text(p.get('role', 'model'))} is writing…*\n\n{self._token_text}")
        self.tokens.visible = True

    def _clear_tokens(self) -> None:
        self._token_text = ""
        self.tokens.object = ""  # not kept hidden: the answer's text must be on the page once
        self.tokens.visible = False

    @staticmethod
    def _cell_block(title: str, code: str, body: str, *, open_: bool, kind: str) -> str:
        return (f"<details class='ds-cell ds-{kind}'{' open' if open_ else ''}><summary>{untrusted.text(title)}</summary>"
                f"{_code_html(code)}{body}</details>")

    def _on_cell_started(self, p: dict[str, Any]) -> None:
        cell = int(p.get("cell", 0))
        if cell in self._cells:
            return
        self._clear_tokens()
        self._cells[cell] = len(self._blocks)
        self._running_code[cell] = p.get("code", "")
        self._add(self._cell_block(f"Cell {cell} · running…", p.get("code", ""), "<i>running…</i>", open_=True, kind="running"))

    def _on_cell_output(self, p: dict[str, Any]) -> None:
        """What a running cell printed since the last such event: shown under its code while it runs."""
        cell = int(p.get("cell", 0))
        if cell not in self._running_code:  # its end is shown already (or it never said it started)
            return
        outputs = self._streamed.setdefault(cell, [])
        outputs.append({"output_type": "stream", "name": p.get("name", "stdout"), "text": str(p.get("text", ""))})
        body = outputs_html(_merged_streams(outputs), []) + "<i>running…</i>"
        self._blocks[self._cells[cell]] = self._cell_block(f"Cell {cell} · running…", self._running_code[cell], body, open_=True,
                                                          kind="running")

    def _on_agent_cell(self, p: dict[str, Any]) -> None:
        cell = int(p.get("cell", 0))
        self._running_code.pop(cell, None)
        self._streamed.pop(cell, None)
        if cell not in self._cells:
            self._cells[cell] = len(self._blocks)
            self._add("")
        setup = p.get("role") == "setup"
        status = p.get("status", "")
        refs = list(p.get("artifacts") or [])
        self._artifacts.extend(refs)
        body = outputs_html(list(p.get("outputs") or []), refs) or "<i>(no output)</i>"
        what = "setup" if setup else (p.get("role") or "code")
        title = f"Cell {cell} · {what} · {status}" + (f" · {len(refs)} artifact(s)" if refs else "")
        kind = "setup" if setup else ("ok" if status == "ok" else "error")
        self._blocks[self._cells[cell]] = self._cell_block(title, p.get("code", ""), body, open_=not setup, kind=kind)

    def _on_agent_approval_pending(self, p: dict[str, Any]) -> None:
        arguments = p.get("arguments") or {}
        code = arguments.get("code") or arguments.get("command") or arguments.get("content") or ""
        editor = pn.widgets.TextAreaInput(value=code, height=140, sizing_mode="stretch_width", name="code to run")
        reason = pn.widgets.TextInput(placeholder="why not (told to the agent)", width=260, name="reject reason")
        buttons = [pn.widgets.Button(name=n, button_type=t, width=90) for n, t in (("Run", "success"), ("Edit", "primary"),
                                                                                       ("Reject", "danger"))]
        state = chat_pane(f"<b>The agent wants to {untrusted.text(str(p.get('tool', 'run code')))}</b>: run it as is, edit it "
                          "(your code runs and is recorded), or reject it.")
        card = pn.Card(state, editor, pn.Row(*buttons, reason), title="Waiting for your approval", collapsed=False,
                       sizing_mode="stretch_width", header_background="color-mix(in srgb, var(--ds-unverified) 22%, var(--ds-surface))")
        self._approval = {"card": card, "buttons": buttons, "state": state, "editor": editor}
        for button, action in zip(buttons, ("run", "edit", "reject")):
            button.on_click(partial(self._decide, action, editor, reason))  # a partial of a coroutine function: Panel awaits it
        self.layout.insert(len(self.layout) - 1, card)  # above the footer

    async def _decide(self, action: str, editor: Any, reason_box: Any, _event: Any = None) -> None:
        if self._approval is None:
            return
        code, reason = editor.value, reason_box.value
        for b in self._approval["buttons"]:
            b.disabled = True
        await self._on_decide(self.run_id, action, code if action == "edit" else None, reason or "rejected from the dashboard")

    def _on_agent_approval(self, p: dict[str, Any]) -> None:
        if self._approval is None:
            return
        word = {"run": "approved", "edit": "edited and run", "reject": "rejected"}.get(p.get("action", ""), str(p.get("action")))
        reason = f": {untrusted.text(str(p['reason']))}" if p.get("reason") and p.get("action") == "reject" else ""
        self._note(f"<b>Approval: {untrusted.text(word)}</b>{reason}")
        if self._approval["card"] in self.layout.objects:
            self.layout.remove(self._approval["card"])
        self._approval = None

    def _on_agent_review(self, p: dict[str, Any]) -> None:
        findings = p.get("findings") or []
        lines = [f"**Reviewer: {p.get('verdict')}**"]
        for f in findings[:20]:
            where = f" (cell {f.get('cell')})" if f.get("cell") is not None else ""
            lines.append(f"- *{f.get('severity', 'info')}*{where}: {f.get('reason', '')}" + (f" — fix: {f['fix']}" if f.get("fix") else ""))
        self._add(f"<div class='ds-review'>{untrusted.markdown(chr(10).join(lines))}</div>")

    def _on_agent_answer(self, p: dict[str, Any]) -> None:
        self._clear_tokens()
        self._add(f"<div class='ds-md'><b>Answer</b>{untrusted.markdown(p.get('answer', ''))}</div>")

    def _on_agent_finish(self, p: dict[str, Any]) -> None:
        if p.get("error"):
            self._note(f"<span class='ds-note-error'>{untrusted.text(str(p['error']))}</span>")

    def _on_agent_retry(self, p: dict[str, Any]) -> None:
        self._note(f"the model endpoint: {untrusted.text(str(p.get('reason') or p.get('error') or 'retrying'))}")

    def _on_cancel_requested(self, p: dict[str, Any]) -> None:
        self._note(f"stop asked by {untrusted.text(str(p.get('user')))}")

    def _on_status(self, p: dict[str, Any]) -> None:
        status = p.get("status", "")
        if status not in TERMINAL_STATUSES:
            return
        self.status, self.done = status, True
        self._clear_tokens()
        for cell, index in self._cells.items():
            if "running…" in self._blocks[index]:
                self._blocks[index] = self._blocks[index].replace(f"Cell {cell} · running…", f"Cell {cell} · interrupted").replace(
                    "<i>running…</i>", "<i>interrupted (the turn was stopped)</i>")
        if self._approval is not None:
            self._on_agent_approval({"action": "never answered"})
        links = [f'<a href="./artifact?id={int(a["id"])}">{untrusted.text(a.get("name", str(a["id"])))}</a>'
                 for a in self._artifacts if a.get("kind") != "text"]
        extra = f" · error: {untrusted.text(str(p.get('error')))}" if p.get("error") else ""
        text = (f"artifacts: {', '.join(links)}" if links else "no artifacts") + extra
        if status == "cancelled":
            text = "stopped: the partial notebook is kept; the chat goes on. " + text
        elif status == "unverified":
            text = ("unverified: the outputs do not support this answer (see the review); check the cells before "
                    "using it, or ask again more precisely. " + text)
        self.footer_text.object = text
        self.footer.visible = True

    async def _save(self, _event: Any = None) -> None:
        await self._on_save(self.run_id)



class Toast(pn.viewable.Viewer):
    """A snackbar at the bottom of the window, whatever the scroll position: ``show(html)`` for ``seconds``.

    Its own element rather than Panel's notifications (off in this dashboard: their extension loads for every
    page); ``html`` is built by the caller from escaped text (``untrusted``)."""

    seconds = param.Number(default=12.0, bounds=(0, None), doc="how long a message stays")

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self._pane = pn.pane.HTML("", visible=False, stylesheets=[CHAT_CSS + _TOAST_CSS], css_classes=["ds-toast"], margin=0)
        self._shown = 0  # the newest message's number: an older message's timer does not hide it

    def __panel__(self) -> pn.pane.HTML:
        return self._pane

    def show(self, html: str) -> None:
        self._shown += 1
        self._pane.object = f"<div class='ds-toast-box' role='status'>{html}</div>"
        self._pane.visible = True
        number = self._shown
        if pn.state.curdoc is not None and pn.state.curdoc.session_context is not None and self.seconds:
            pn.state.curdoc.add_timeout_callback(lambda: self._hide(number), int(self.seconds * 1000))

    def _hide(self, number: int) -> None:
        if number == self._shown:
            self._pane.visible = False


_TOAST_CSS = """
:host(.ds-toast) {position: fixed !important; left: 50%; bottom: 16px; transform: translateX(-50%); z-index: 1000;
                  width: max-content; max-width: calc(100vw - 32px)}
.ds-toast-box {background: #323232; color: #fff; padding: 10px 16px; border-radius: 6px; box-shadow: 0 3px 10px rgba(0,0,0,.3);
               overflow-wrap: anywhere}
.ds-toast-box a {color: #90caf9}
.ds-toast-box code {color: #fff}
"""
