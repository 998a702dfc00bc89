"""The dashboard's Content-Security-Policy: a second wall behind escaping (``untrusted.py``).

Bokeh writes each page with inline scripts of its own (the session's bootstrap,
its token inside), different for every response, so no fixed hash or nonce
list fits them. The policy is therefore made per response: the hashes of the
inline scripts in the HTML that Bokeh and Panel rendered on the server, and
nothing else. No text from data, runs or a model is part of that HTML (pages
fill in their content over the websocket, after load), so these hashes allow
exactly the framework's own scripts. What the policy stops is what an escaping
slip would let through: an event attribute (``<img onerror=...>``), a
``javascript:`` URL, a ``<script>`` that reaches the page later (Panel's HTML
pane runs the scripts of the HTML it shows), a request to another origin.

Responses that set their own policy (artifact downloads and previews, whose
stricter ``PREVIEW_CSP`` confines HTML artifacts) keep it.
"""

from __future__ import annotations

import base64
import hashlib
import re
from typing import Any

from tornado.web import OutputTransform

__all__ = ["PageCspTransform", "policy_for", "install"]

# inline scripts that run: no src, and no type or a JavaScript type (a JSON data block is not run, CSP ignores it)
_INLINE_SCRIPT = re.compile(rb"<script(?P<attrs>(?:\s[^>]*)?)>(?P<body>.*?)</script>", re.S | re.I)
_SRC = re.compile(rb"\ssrc\s*=", re.I)
_TYPE = re.compile(rb"""\stype\s*=\s*["']?([^"'\s>]+)""", re.I)
_SCRIPT_TYPES = {b"text/javascript", b"application/javascript", b"module"}

# unsafe-eval: Bokeh compiles its models' expression code and Panel its templates' callbacks with `new Function`;
# text from data never reaches those (it is shown, not evaluated), so eval is no path for it.
# blob: Panel mounts each ESM component (the panel-material-ui frame) from a small module it writes into a blob
# URL. A blob URL is minted only by script already running in this page (the framework's own, allowed above),
# so markup that slips through escaping cannot bring a script of its own this way.
# style-src unsafe-inline: Bokeh sizes and positions every element with inline styles, and Material UI (emotion)
# writes its components' styles into <style> elements at run time.
_FIXED = (
    "default-src 'self'; img-src 'self' data: blob:; font-src 'self' data:; style-src 'self' 'unsafe-inline'; "
    "connect-src 'self'; frame-src 'self'; worker-src 'self' blob:; object-src 'none'; base-uri 'self'; "
    "form-action 'self'; frame-ancestors 'self'"
)


def policy_for(page: bytes) -> str:
    """The policy for one HTML page: its own inline scripts allowed by hash, no other inline script."""
    hashes = sorted({_hash(m.group("body")) for m in _INLINE_SCRIPT.finditer(page) if _runs(m.group("attrs"))})
    sources = " ".join(["'self'", "blob:", "'unsafe-eval'", *(f"'sha256-{h}'" for h in hashes)])
    return f"{_FIXED}; script-src {sources}"


def _runs(attrs: bytes) -> bool:
    if _SRC.search(attrs):
        return False
    kind = _TYPE.search(attrs)
    return kind is None or kind.group(1).lower() in _SCRIPT_TYPES


def _hash(body: bytes) -> str:
    return base64.b64encode(hashlib.sha256(body).digest()).decode("ascii")


class PageCspTransform(OutputTransform):
    """Adds the page's policy to every complete HTML response that has none (Tornado runs it before gzip)."""

    def transform_first_chunk(self, status_code: int, headers: Any, chunk: bytes, finishing: bool):
        is_html = headers.get("Content-Type", "").startswith("text/html")
        if is_html and "Content-Security-Policy" not in headers:
            # a page written in pieces cannot be hashed whole: allow no inline script at all rather than guess
            headers["Content-Security-Policy"] = policy_for(chunk) if finishing else policy_for(b"")
            headers.setdefault("X-Content-Type-Options", "nosniff")
            headers.setdefault("Referrer-Policy", "same-origin")
        return status_code, headers, chunk


def install(tornado_app: Any) -> None:
    """Put the transform first, so it sees the page before any compression does."""
    tornado_app.transforms.insert(0, PageCspTransform)
