"""Gallery thumbnails: made once per image content (sha256) and kept in ``<workspace>/thumbnails/``.

A gallery page of 24 images then costs 24 small files, not 24 full PNGs.
Bytes are content-addressed, so a thumbnail never goes stale; a thumbnail
that cannot be made (SVG, a broken image) is remembered as such and the
gallery shows the full image instead.
"""

from __future__ import annotations

import io
import os
import threading
from pathlib import Path

__all__ = ["thumbnail", "kept_thumbnail", "THUMB_SIZE"]

THUMB_SIZE = (320, 240)


def thumbnail(folder: Path, sha256: str, data_loader) -> bytes | None:
    """The PNG thumbnail of the image with this sha256 (made from ``data_loader()`` the first time), or None."""
    path = folder / sha256[:2] / f"{sha256}.png"
    if path.exists():
        data = path.read_bytes()
        return data or None  # an empty file: known not to be thumbnailable
    made = _make(data_loader())
    path.parent.mkdir(parents=True, exist_ok=True)
    # one temporary file per thread: two requests for images of the same content make it at once (one server, one pid)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_bytes(made or b"")
    os.replace(tmp, path)
    return made


def kept_thumbnail(folder: Path, sha256: str) -> bytes | None:
    """The thumbnail already made for this content, or None (not made yet, not an image, not a sha256).

    Any logged-in user may read every artifact, so serving a kept thumbnail by its
    content hash shows nothing the artifact's own route would not."""
    if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
        return None
    try:
        return (folder / sha256[:2] / f"{sha256}.png").read_bytes() or None
    except OSError:
        return None


def _make(data: bytes) -> bytes | None:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            image.thumbnail(THUMB_SIZE)
            if image.mode not in ("RGB", "RGBA", "L", "LA", "P"):
                image = image.convert("RGBA")
            out = io.BytesIO()
            image.save(out, format="PNG", optimize=True)
            return out.getvalue()
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        return None
