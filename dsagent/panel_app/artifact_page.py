"""One artifact's page (``/artifact?id=N``): its metadata, a preview by kind, downloads."""

from __future__ import annotations

import io
import json
from typing import TYPE_CHECKING, Any

import panel as pn

from dsagent.panel_app import untrusted
from dsagent.panel_app.components import not_found_page
from dsagent.panel_app.widgets import (Missing, Notice, artifact_preview, current_user, html_pane, human_size, page_frame, preloaded, query_arg,
                                       run_link, time_text)

if TYPE_CHECKING:
    from dsagent.artifacts.models import Artifact
    from dsagent.panel_app.context import AppContext

__all__ = ["page", "preload"]

_PREVIEW_BYTES_LIMIT = 20 << 20  # tables/text beyond this are downloaded, not previewed
#: FileDownload sends the bytes base64-encoded over the websocket; bigger files use the plain link (HTTP, Range)
_FILE_DOWNLOAD_LIMIT = 20 << 20


def preload(ctx: "AppContext", args: dict[str, str]) -> "Artifact | None":
    """The artifact's record (NotFound if there is none: the page is then the not-found page)."""
    try:
        artifact_id = int(args.get("id", ""))
    except ValueError:
        return None  # the page says what is wrong with the address
    return ctx.store.get_artifact(artifact_id)


def page(ctx: "AppContext") -> Any:
    raw = query_arg("id")
    notice = Notice()
    try:
        artifact_id = int(raw or "")
    except ValueError:
        return not_found_page("/artifacts", "Artifact", f"No artifact id {untrusted.text(raw or '')} in the address", "./artifacts",
                              "All artifacts", user=current_user())
    if isinstance(preloaded(), Missing):
        return not_found_page("/artifacts", f"Artifact {artifact_id}", f"There is no artifact {artifact_id} in this workspace",
                              "./artifacts", "All artifacts", user=current_user())
    meta = html_pane("loading…")
    preview = pn.Column(sizing_mode="stretch_width")

    async def stored_bytes():  # FileDownload awaits this on click: the bytes are read then, off the event loop
        _, data = await ctx.read(ctx.store.read_artifact, artifact_id)
        return io.BytesIO(data)

    # Panel's download button, next to the plain link to the REST route (which also serves Range requests)
    download = pn.widgets.FileDownload(callback=stored_bytes, filename="artifact", label="Download", button_type="primary",
                                       width=260, visible=False, name="file-download")

    async def load() -> None:
        async def work() -> None:
            artifact = await ctx.read(ctx.store.get_artifact, artifact_id)
            needs_bytes = artifact.kind in ("table", "text", "json") or artifact.mime.startswith("text/")
            data = None
            if needs_bytes and artifact.size <= _PREVIEW_BYTES_LIMIT:
                _, data = await ctx.read(ctx.store.read_artifact, artifact_id)
            rows = [("name", untrusted.text(artifact.name)), ("kind", artifact.kind), ("mime", untrusted.text(artifact.mime)),
                    ("size", human_size(artifact.size)), ("run", run_link(artifact.run_id)),
                    ("cell", "" if artifact.cell is None else str(artifact.cell)), ("created", time_text(artifact.created)),
                    ("sha256", f"<code>{artifact.sha256}</code>"), ("tags", untrusted.text(", ".join(artifact.tags)))]
            if artifact.metadata:
                rows.append(("metadata", f"<pre style='margin:0'>{untrusted.text(json.dumps(artifact.metadata, indent=1, default=str)[:3000])}</pre>"))
            links = (f'<a href="./api/artifacts/{artifact.id}" download id="download-artifact">⬇ download</a>'
                     f' &nbsp;·&nbsp; <a href="./api/artifacts/{artifact.id}/meta">metadata as JSON</a>')
            meta.object = ("<table class='ds-kv'>" + "".join(f"<tr><td><b>{k}</b></td><td>{v}</td></tr>" for k, v in rows)
                           + f"</table><p>{links}</p>")
            if artifact.size <= _FILE_DOWNLOAD_LIMIT:
                download.param.update(filename=artifact.name, label=f"Download {artifact.name}", visible=True)
            preview.objects = [pn.pane.Markdown("### Preview"), artifact_preview(ctx, artifact, data)]
        await notice.guard(work)

    pn.state.onload(load)
    return page_frame("/artifacts", f"Artifact {artifact_id}", notice.pane, meta, download, preview, user=current_user())
