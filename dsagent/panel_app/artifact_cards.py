"""How an artifact looks in a list: a card with its thumbnail (or its kind's icon), name, kind chip, size, age and run.

HTML strings for one HTML pane (a gallery of 24 cards is one Bokeh model, not 24), styled by ``CSS``; the colours
come from the theme's variables (``templates/page.html``), so light and dark both read. Names and mime types come
from data and go through ``untrusted``; ids are integers, sizes and times are the dashboard's own formats.

    gallery_html(page.items, now)      # '<ul class="ds-gallery">…</ul>'
    kind_chip("table")                 # '<span class="ds-chip ds-kind-table">…table</span>'
    gallery_skeleton(8)                # grey cards while a page of artifacts is read

Thumbnails are ``<img>``s on ``/api/artifacts/{id}/thumb?sha256=…`` (a kept thumbnail is served without a store
read) on a white frame, whatever the theme: a plot is drawn for white paper. Until the image has loaded its frame
pulses (a skeleton); ``WIRE_THUMBS`` marks frames loaded (the script runs once per page, from ``document_ready``).
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Iterable

from dsagent.panel_app import formats, untrusted

if TYPE_CHECKING:
    from dsagent.artifacts.models import Artifact

__all__ = ["CSS", "KIND_COLOURS", "WIRE_THUMBS", "kind_icon", "kind_chip", "artifact_card", "gallery_html", "gallery_skeleton"]

EAGER = 8  # the first cards' thumbnails are fetched at once, not when layout finds them visible (the first screen)

#: a kind's colour: one of the theme's variables, so the chip and the icon read in light and dark
KIND_COLOURS = {"image": "--ds-primary", "table": "--ds-succeeded", "html": "--ds-unverified", "json": "--ds-idle",
                "text": "--ds-queued", "notebook": "--ds-running", "file": "--ds-cancelled"}

_SVG = ('<svg class="ds-icon" viewBox="0 0 24 24" width="{size}" height="{size}" fill="none" stroke="currentColor" '
        'stroke-width="1.8" stroke-linecap="round" stroke-linejoin="round" aria-hidden="true">{body}</svg>')
_KIND_ICONS = {
    "image": '<rect x="3.5" y="4.5" width="17" height="15" rx="2"/><circle cx="9" cy="10" r="1.8"/><path d="M20.5 16l-5-5-9 8.5"/>',
    "table": '<rect x="3.5" y="4.5" width="17" height="15" rx="1.5"/><path d="M3.5 9.5h17M3.5 14.5h17M9.5 9.5v10"/>',
    "html": '<path d="M8 8l-4.5 4 4.5 4M16 8l4.5 4-4.5 4M13.5 6l-3 12"/>',
    "json": '<path d="M8.5 4.5H7.5a2 2 0 0 0-2 2v3a2.5 2.5 0 0 1-2 2.5 2.5 2.5 0 0 1 2 2.5v3a2 2 0 0 0 2 2h1'
            'M15.5 4.5h1a2 2 0 0 1 2 2v3a2.5 2.5 0 0 0 2 2.5 2.5 2.5 0 0 0-2 2.5v3a2 2 0 0 1-2 2h-1"/>',
    "text": '<path d="M6.5 3.5h7l4 4v13h-11z"/><path d="M13.5 3.5v4h4M9 12h6M9 15.5h6"/>',
    "notebook": '<path d="M5 4.5h11a2 2 0 0 1 2 2v13H7a2 2 0 0 1-2-2z"/><path d="M5 17.5a2 2 0 0 1 2-2h11M9 8.5h5"/>',
    "file": '<path d="M6.5 3.5h7l4 4v13h-11z"/><path d="M13.5 3.5v4h4"/>',
    "download": '<path d="M12 4v11M7 10.5l5 5 5-5M5 19.5h14"/>',
}

CSS = """
.ds-gallery {display: grid; grid-template-columns: repeat(auto-fill, minmax(150px, 1fr)); gap: 12px; list-style: none;
  margin: 4px 0 8px 0; padding: 0}
.ds-acard {display: flex; flex-direction: column; min-width: 0; border: 1px solid var(--ds-border); border-radius: 8px; overflow: hidden;
  background: var(--ds-surface); transition: box-shadow .15s}
.ds-acard:hover, .ds-acard:focus-within {box-shadow: 0 2px 10px rgba(0,0,0,.22)}
.ds-thumb {display: flex; flex-direction: column; align-items: center; justify-content: center; gap: 2px; aspect-ratio: 4 / 3;
  background: #fff; border-bottom: 1px solid var(--ds-border); overflow: hidden; text-decoration: none; position: relative}
.ds-thumb img {width: 100%; height: 100%; object-fit: contain; display: block}
.ds-thumb-image:not(.ds-loaded) {animation: ds-thumb-wait 1.4s ease-in-out infinite}
@keyframes ds-thumb-wait {0%, 100% {background: #e8eaed} 50% {background: #f4f5f7}}
.ds-thumb-kind {color: var(--ds-c); background: color-mix(in srgb, var(--ds-c) 9%, var(--ds-surface))}
.ds-thumb-kind span {font-size: 0.75rem; font-weight: 600; letter-spacing: .04em; text-transform: uppercase}
.ds-acard-body {display: flex; flex-direction: column; gap: 5px; padding: 8px 10px 10px 10px; min-width: 0; font-size: 0.85rem}
.ds-acard-name {font-weight: 500; color: var(--ds-text); text-decoration: none; overflow: hidden; text-overflow: ellipsis;
  white-space: nowrap}
.ds-acard-name:hover {text-decoration: underline}
.ds-acard-meta {display: flex; flex-wrap: wrap; align-items: center; gap: 4px 8px; color: var(--ds-muted); min-width: 0}
.ds-acard-where {color: var(--ds-muted); overflow-wrap: anywhere}
.ds-acard-where a {color: var(--ds-link)}
.ds-chip.ds-kind {--ds-c: var(--ds-muted)}
.ds-bone {display: block; border-radius: 4px; background: var(--ds-skeleton); animation: ds-pulse 1.4s ease-in-out infinite}
"""

# Marks a thumbnail's frame loaded (it stops pulsing) when its image has loaded or failed. One capturing listener on
# each shadow root that holds a gallery: it outlives the gallery's HTML, which the page replaces on a new page of
# results ("load" does not bubble, but a capturing listener on an ancestor sees it).
WIRE_THUMBS = """
const mark = (img) => { const frame = img.closest('.ds-thumb'); if (frame != null) { frame.classList.add('ds-loaded') } }
const roots = []
const walk = (root) => {
  if (root !== document && root.querySelector('.ds-gallery') != null) { roots.push(root) }
  for (const el of root.querySelectorAll('*')) { if (el.shadowRoot != null) { walk(el.shadowRoot) } }
}
walk(document)
for (const root of roots) {
  if (root.dsThumbsWired) { continue }
  root.dsThumbsWired = true
  const done = (event) => { if (event.target instanceof HTMLImageElement) { mark(event.target) } }
  root.addEventListener('load', done, true)
  root.addEventListener('error', done, true)
  root.querySelectorAll('.ds-thumb img').forEach((img) => { if (img.complete) { mark(img) } })
}
"""


def kind_icon(kind: str, size: int = 40) -> str:
    """The icon of an artifact kind (or ``download``) as inline SVG."""
    return _SVG.format(size=size, body=_KIND_ICONS.get(kind, _KIND_ICONS["file"]))


def _colour(kind: str) -> str:
    return f"var({KIND_COLOURS.get(kind, '--ds-muted')})"


def kind_chip(kind: str) -> str:
    """An artifact's kind as a chip in the kind's colour (the status chips' shape)."""
    return (f"<span class='ds-chip ds-kind' style='--ds-c: {_colour(kind)}'>{kind_icon(kind, 14)}"
            f"{untrusted.text(kind)}</span>")


def _extension(name: str) -> str:
    suffix = name.rsplit(".", 1)[-1] if "." in name[1:] else ""
    return suffix[:8] if suffix.isalnum() else ""


def _thumb(artifact: "Artifact", eager: bool) -> str:
    href = f"./artifact?id={artifact.id}"
    if artifact.kind == "image":
        return (f"<a class='ds-thumb ds-thumb-image' href='{href}' tabindex='-1'><img loading='{'eager' if eager else 'lazy'}' "
                f"decoding='async' src='./api/artifacts/{artifact.id}/thumb?sha256={untrusted.text(artifact.sha256)}' "
                f"alt='{untrusted.text(artifact.name)}'></a>")
    label = _extension(artifact.name) or artifact.kind
    return (f"<a class='ds-thumb ds-thumb-kind' href='{href}' tabindex='-1' style='--ds-c: {_colour(artifact.kind)}' "
            f"aria-hidden='true'>{kind_icon(artifact.kind, 44)}<span>{untrusted.text(label)}</span></a>")


def artifact_card(artifact: "Artifact", now: datetime, *, eager: bool = False) -> str:
    """One artifact as a card: thumbnail (or its kind's icon), name, kind chip and size, run, cell and age."""
    cell = f" · cell {int(artifact.cell)}" if artifact.cell is not None else ""
    return (f"<li class='ds-acard'>{_thumb(artifact, eager)}<div class='ds-acard-body'>"
            f"<a class='ds-acard-name' href='./artifact?id={artifact.id}' title='{untrusted.text(artifact.name)}'>"
            f"{untrusted.text(artifact.name)}</a>"
            f"<div class='ds-acard-meta'>{kind_chip(artifact.kind)}<span>{formats.size(artifact.size)}</span></div>"
            f"<div class='ds-acard-where'><a href='./run?id={int(artifact.run_id)}'>run {int(artifact.run_id)}</a>{cell} · "
            f"{formats.time_cell(artifact.created, now)}</div></div></li>")


def gallery_html(artifacts: Iterable["Artifact"], now: datetime | None = None) -> str:
    """A page of artifacts as a grid of cards (the first ``EAGER`` thumbnails fetched at once)."""
    now = now or formats.minute_now()
    cards = "".join(artifact_card(a, now, eager=i < EAGER) for i, a in enumerate(artifacts))
    return f"<ul class='ds-gallery' aria-label='artifacts'>{cards}</ul>"


def gallery_skeleton(cards: int = 8) -> str:
    """Grey cards where a page of artifacts is on its way."""
    card = ("<li class='ds-acard' aria-hidden='true'><span class='ds-bone' style='aspect-ratio: 4 / 3; border-radius: 0'></span>"
            "<div class='ds-acard-body'><span class='ds-bone' style='height: 14px; width: 80%'></span>"
            "<span class='ds-bone' style='height: 12px; width: 55%'></span></div></li>")
    return f"<ul class='ds-gallery' role='progressbar' aria-label='loading the artifacts'>{card * cards}</ul>"
