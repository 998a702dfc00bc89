"""One artifact's page (``/artifact?id=N``): its name with a Download action, what it is and where it came from,
and a preview by kind.

The record and its run are read before the page is built (``preload``), so the header and the details come with
the page; the preview's bytes (a table, a text) are read once the browser has it, a skeleton meanwhile.
"""

from __future__ import annotations

import io
import json
from typing import TYPE_CHECKING, Any

import panel as pn
import param

from dsagent.panel_app import formats, untrusted
from dsagent.panel_app.artifact_cards import CSS as CARDS_CSS
from dsagent.panel_app.artifact_cards import kind_chip, kind_icon
from dsagent.panel_app.components import card, loading_placeholder, not_found_page, status_chip
from dsagent.panel_app.layout import page_frame
from dsagent.panel_app.widgets import Missing, Notice, artifact_preview, current_user, html_pane, preloaded, query_arg

if TYPE_CHECKING:
    from dsagent.artifacts.models import Artifact, Run
    from dsagent.panel_app.context import AppContext

__all__ = ["ArtifactView", "page", "preload", "details_html"]

_PREVIEW_BYTES_LIMIT = 20 << 20  # tables/text beyond this are downloaded, not previewed
#: FileDownload sends the bytes base64-encoded over the websocket; bigger files use the plain link (HTTP, Range)
_FILE_DOWNLOAD_LIMIT = 20 << 20
_CSS = CARDS_CSS + """
.ds-facts {display: grid; grid-template-columns: max-content minmax(0, 1fr); gap: 6px 16px; margin: 4px 0 8px 0; align-items: baseline}
.ds-facts dt {color: var(--ds-muted); font-size: 0.85rem}
.ds-facts dd {margin: 0; min-width: 0; overflow-wrap: anywhere}
.ds-facts code {font-size: 0.82rem}
.ds-facts details pre {margin: 4px 0 0 0; white-space: pre-wrap; overflow-wrap: anywhere; font-size: 0.82rem; max-height: 320px; overflow: auto}
.ds-facts summary {cursor: pointer}
.ds-actions {display: flex; flex-wrap: wrap; gap: 8px}
.ds-button {display: inline-flex; align-items: center; gap: 6px; padding: 7px 16px; border-radius: 4px; font-weight: 500;
  text-decoration: none; color: var(--ds-surface); background: var(--ds-primary); white-space: nowrap}
.ds-button:hover {filter: brightness(1.08)}
.ds-button.ds-outlined {color: var(--ds-primary); background: transparent; border: 1px solid color-mix(in srgb, var(--ds-primary) 55%, transparent)}
"""

_ELLIPSIS = ".bk-btn {overflow: hidden; text-overflow: ellipsis; white-space: nowrap}"  # a long name stays on its button


def _artifact_id(raw: str | None) -> int | None:
    try:
        return int(raw or "")
    except ValueError:
        return None


def preload(ctx: "AppContext", args: dict[str, str]) -> dict[str, Any] | None:
    """The artifact's record and its run (NotFound if there is none: the page is then the not-found page)."""
    artifact_id = _artifact_id(args.get("id"))
    if artifact_id is None:
        return None  # the page says what is wrong with the address
    artifact = ctx.store.get_artifact(artifact_id)
    return {"artifact": artifact, "run": ctx.store.get_run(artifact.run_id)}


def _actions_html(artifact_id: int) -> str:
    """The title row's actions: Download (the REST route: HTTP, Range, the stored name) and the record as JSON."""
    return (f"<div class='ds-actions'><a class='ds-button' id='download-artifact' href='./api/artifacts/{artifact_id}' download>"
            f"{kind_icon('download', 18)}Download</a><a class='ds-button ds-outlined' href='./api/artifacts/{artifact_id}/meta' "
            "target='_blank' rel='noopener'>Metadata as JSON</a></div>")


def details_html(artifact: "Artifact", run: "Run | None") -> str:
    """What the artifact is and where it came from, as a definition list (names and values escaped)."""
    run_html = (f"<a href='./run?id={int(artifact.run_id)}'>run {int(artifact.run_id)}</a>"
                + (f" · {untrusted.text(run.title or run.kind)} {status_chip(run.status)}" if run is not None else ""))
    cell = ("" if artifact.cell is None else
            f"<a href='./run?id={int(artifact.run_id)}' title='the cell is in the run’s notebook'>cell {int(artifact.cell)}</a>")
    rows = [("kind", kind_chip(artifact.kind)), ("size", f"<span title='{artifact.size:,} bytes'>{formats.size(artifact.size)}</span>"),
            ("type", f"<code>{untrusted.text(artifact.mime)}</code>"), ("run", run_html), ("cell", cell),
            ("created", formats.time_cell(artifact.created)), ("sha256", f"<code>{untrusted.text(artifact.sha256)}</code>")]
    if artifact.tags:
        rows.append(("tags", untrusted.text(", ".join(artifact.tags))))
    if artifact.metadata:
        text = json.dumps(artifact.metadata, indent=1, default=str)
        rows.append(("metadata", f"<details><summary>{len(artifact.metadata)} entries</summary><pre>{untrusted.text(text[:3000])}</pre></details>"))
    return "<dl class='ds-facts'>" + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in rows if v) + "</dl>"


class ArtifactView(pn.viewable.Viewer):
    """An artifact's page: the header and details from the preloaded record, the preview once the browser has the
    page (``load_preview``). ``on_download`` is the FileDownload's callback (the bytes over the websocket)."""

    artifact = param.Parameter(default=None, doc="the artifact's record (None until read, if the preload failed)")
    run = param.Parameter(default=None, doc="the run that made it")

    def __init__(self, ctx: "AppContext", artifact_id: int, first: dict[str, Any] | None = None, **params: Any) -> None:
        super().__init__(**params)
        self.ctx, self.artifact_id = ctx, artifact_id
        self.notice = Notice()
        self.details = html_pane(loading_placeholder(4, "loading the details"), stylesheets=[_CSS])
        self.preview = pn.Column(html_pane(loading_placeholder(6, "loading the preview")), sizing_mode="stretch_width", margin=0)
        # Panel's download button (the bytes through the page's websocket), next to the title row's link to the REST route
        self.download = pn.widgets.FileDownload(callback=self.on_download, filename="artifact", label="Download", button_type="primary",
                                                button_style="outline", sizing_mode="stretch_width", max_width=360, visible=False,
                                                name="file-download", stylesheets=[_ELLIPSIS])
        if first is not None:
            self.param.update(artifact=first["artifact"], run=first["run"])
        pn.state.onload(self.load_preview)

    def __panel__(self) -> Any:
        title = self.artifact.name if self.artifact is not None else f"Artifact {self.artifact_id}"
        actions = [html_pane(_actions_html(self.artifact_id), stylesheets=[_CSS], sizing_mode=None, margin=0)]
        return page_frame("/artifacts", title, self.notice.pane, card(self.details, self.download, title="Details"),
                          card(self.preview, title="Preview"), actions=actions, user=current_user())

    @param.depends("artifact", "run", watch=True, on_init=True)
    def _show_details(self) -> None:
        if self.artifact is None:
            return
        self.details.object = details_html(self.artifact, self.run)
        if self.artifact.size <= _FILE_DOWNLOAD_LIMIT:
            self.download.param.update(filename=self.artifact.name, label=f"Download {self.artifact.name}", visible=True)

    async def load_preview(self) -> None:
        async def work() -> None:
            if self.artifact is None:  # the preload failed (a busy store): read the record now
                artifact = await self.ctx.read(self.ctx.store.get_artifact, self.artifact_id)
                self.param.update(artifact=artifact, run=await self.ctx.read(self.ctx.store.get_run, artifact.run_id))
            artifact = self.artifact
            needs_bytes = artifact.kind in ("table", "text", "json") or artifact.mime.startswith("text/")
            data = None
            if needs_bytes and artifact.size <= _PREVIEW_BYTES_LIMIT:
                _, data = await self.ctx.read(self.ctx.store.read_artifact, self.artifact_id)
            self.preview.objects = [artifact_preview(self.ctx, artifact, data)]
        await self.notice.guard(work)

    async def on_download(self) -> io.BytesIO:
        """FileDownload awaits this on click: the bytes are read then, off the event loop."""
        _, data = await self.ctx.read(self.ctx.store.read_artifact, self.artifact_id)
        return io.BytesIO(data)


def page(ctx: "AppContext") -> Any:
    raw = query_arg("id")
    artifact_id = _artifact_id(raw)
    if artifact_id is None:
        return not_found_page("/artifacts", "Artifact", f"No artifact id {untrusted.text(raw or '')} in the address", "./artifacts",
                              "All artifacts", user=current_user())
    first = preloaded()
    if isinstance(first, Missing):
        return not_found_page("/artifacts", f"Artifact {artifact_id}", f"There is no artifact {artifact_id} in this workspace",
                              "./artifacts", "All artifacts", user=current_user())
    return ArtifactView(ctx, artifact_id, first)
