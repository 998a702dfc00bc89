"""The notebooks a user can run from the dashboard: where they are, one page of them, adding one by upload.

Two kinds of folders: the workspace's ``notebooks/`` (uploads from the
dashboard and notebooks saved from chats land there, one ``.ipynb`` each) and
the folders the ``notebook_folders`` setting names (default ``notebooks`` of
the current directory, so ``make serve`` in the repository lists the shipped
ones). Only files directly inside those folders count: a path from a browser
is run only when it resolves to one of them.
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from dsagent.errors import DsagentError, NotebookError, NotFound
from dsagent.settings import Settings
from dsagent.workspace import Workspace

__all__ = ["NotebookEntry", "NotebookPage", "notebook_folders", "list_notebooks", "find_notebook", "resolve_notebook", "save_uploaded_notebook",
           "safe_notebook_name", "WORKSPACE_SOURCE"]

WORKSPACE_SOURCE = "workspace"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class NotebookEntry:
    """One runnable notebook: its file, which folder it comes from, when it last changed."""

    name: str  # the file name, e.g. "model_fit.ipynb"
    path: Path  # resolved
    source: str  # "workspace" (uploaded / saved from a chat) or the configured folder it was found in
    modified: datetime
    size: int


@dataclass(frozen=True)
class NotebookPage:
    items: list[NotebookEntry]
    total: int
    offset: int
    limit: int


def notebook_folders(settings: Settings | None = None) -> list[tuple[str, Path]]:
    """``(source, folder)`` pairs, the workspace's folder first; configured folders that do not exist are left out."""
    settings = settings or Settings()
    folders = [(WORKSPACE_SOURCE, Workspace.from_settings(settings).notebooks_dir)]
    for item in str(settings.notebook_folders or "").split(","):
        name = item.strip()
        if not name:
            continue
        folder = Path(name).expanduser().resolve()
        if folder.is_dir() and all(folder != f for _, f in folders):
            folders.append((name, folder))
    return folders


def _entries(settings: Settings) -> list[NotebookEntry]:
    found: list[NotebookEntry] = []
    seen: set[Path] = set()
    for source, folder in notebook_folders(settings):
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob("*.ipynb"), key=lambda p: p.name.lower()):
            resolved = path.resolve()
            if resolved in seen or path.name.startswith(".") or not path.is_file():
                continue
            seen.add(resolved)
            stat = path.stat()
            found.append(NotebookEntry(path.name, resolved, source, datetime.fromtimestamp(stat.st_mtime, timezone.utc), stat.st_size))
    return found


def list_notebooks(settings: Settings | None = None, *, text: str | None = None, offset: int = 0, limit: int = 50) -> NotebookPage:
    """One page of the notebooks (workspace first, then each configured folder; by name), ``text`` filtering names."""
    if offset < 0 or not 1 <= limit <= 1000:
        raise DsagentError("offset must be >= 0 and limit 1..1000", hint="page through with offset += limit", parameter="limit")
    items = _entries(settings or Settings())
    if text:
        items = [e for e in items if text.lower() in e.name.lower()]
    return NotebookPage(items[offset:offset + limit], len(items), offset, limit)


def find_notebook(path: str | Path, settings: Settings | None = None) -> NotebookEntry:
    """The notebook at ``path`` if it is one the page lists (inside a notebook folder); ``NotFound`` otherwise."""
    settings = settings or Settings()
    raw = Path(str(path)).expanduser()
    for source, folder in notebook_folders(settings):
        candidate = (raw if raw.is_absolute() else folder / raw).resolve()
        if candidate.parent == folder.resolve() and candidate.suffix == ".ipynb" and candidate.is_file():
            stat = candidate.stat()
            return NotebookEntry(candidate.name, candidate, source, datetime.fromtimestamp(stat.st_mtime, timezone.utc), stat.st_size)
    raise NotFound(f"no notebook {str(path)!r} in the notebook folders", hint="pick one on the Notebooks page (or upload it there)",
                   what="notebook", id=str(path))


def resolve_notebook(text: str | Path, settings: Settings | None = None) -> Path:
    """The notebook a command line names, as the dashboard's pickers would find it: a path that exists, as given; else a
    bare name (``sales_cohorts`` or ``sales_cohorts.ipynb``) of a notebook in the notebook folders. ``NotFound`` names
    the folders looked in and the notebooks of a like name (or the first few)."""
    raw = Path(str(text)).expanduser()
    if raw.exists() or len(raw.parts) != 1:  # a path: as it is (its own error if it is not a notebook)
        return raw.resolve()
    settings = settings or Settings()
    name = raw.name if raw.suffix == ".ipynb" else f"{raw.name}.ipynb"
    try:
        return find_notebook(name, settings).path
    except NotFound:
        pass
    names = [e.name for e in _entries(settings)]
    alike = difflib.get_close_matches(name, names, n=5) or names[:8]  # a typo's likely meaning first
    more = f" and {len(names) - len(alike)} more" if len(alike) < len(names) else ""
    known = f"; notebooks there: {', '.join(alike)}{more}" if names else "; there are none yet"
    folders = ", ".join(str(folder) for _, folder in notebook_folders(settings))
    raise NotFound(f"no notebook {str(text)!r} in this folder or in the notebook folders ({folders})",
                   hint=f"give the notebook's path, or the name of one in the notebook folders{known} (the dashboard's "
                   "Notebooks page lists them; the notebook_folders setting adds folders)", what="notebook", id=str(text))


def safe_notebook_name(filename: str) -> str:
    """A file name that stays inside the folder: no directories, only plain characters, ending in ``.ipynb``."""
    base = Path(str(filename).replace("\\", "/")).name
    stem = _UNSAFE.sub("_", base.removesuffix(".ipynb")).strip(" ._-")[:120]
    if not stem:
        raise NotebookError(f"{filename!r} is not a usable notebook file name", hint="rename the file, e.g. report.ipynb",
                            path=str(filename), reason="bad_name")
    return f"{stem}.ipynb"


def save_uploaded_notebook(filename: str, data: bytes, settings: Settings | None = None, *, overwrite: bool = False) -> NotebookEntry:
    """Check that ``data`` is a Jupyter notebook and keep it in the workspace's ``notebooks/`` folder.

    Refused (``NotebookError``, nothing written): too large, not a notebook
    (nbformat cannot read or validate it), or a notebook of that name exists
    and ``overwrite`` is not set (``reason="exists"``, so a page can ask).
    """
    import nbformat

    settings = settings or Settings()
    name = safe_notebook_name(filename)
    limit = settings.notebook_upload_max_bytes
    if len(data) > limit:
        raise NotebookError(f"{filename} is {len(data) / 1e6:.1f} MB, more than the upload limit ({limit / 1e6:.1f} MB)",
                            hint="clear its outputs in Jupyter first, or raise notebook_upload_max_bytes", path=name, reason="too_large")
    try:
        nb = nbformat.reads(data.decode("utf-8"), as_version=4)
        nbformat.validate(nb)
    except Exception as exc:  # nbformat raises several unrelated types for unreadable files
        raise NotebookError(f"{filename} is not a Jupyter notebook: {type(exc).__name__}: {str(exc)[:300]}",
                            hint="upload an .ipynb file saved by Jupyter", path=name, reason="not_a_notebook") from None
    folder = Workspace.from_settings(settings).notebooks_dir
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / name
    if target.exists() and not overwrite:
        raise NotebookError(f"a notebook named {name} is already in the workspace", hint="replace it, or rename the file first",
                            path=str(target), reason="exists")
    partial = folder / f".{name}.{os.getpid()}.part"
    partial.write_bytes(data)  # whole file, then one rename: a reader never sees half a notebook
    os.replace(partial, target)
    return find_notebook(target, settings)
