"""What the Chat page does with files: checks uploads, keeps them, suggests first questions, saves notebooks.

Uploads are checked whole before anything is written (type by extension,
size against ``dashboard_upload_limit``, not empty), so a refused upload leaves
no trace; accepted ones go to a temporary folder that ``create_chat`` copies
into the chat's own data folder.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from dsagent.errors import DsagentError

if TYPE_CHECKING:
    from dsagent.artifacts.chats import ChatRecord
    from dsagent.artifacts.store import Store

__all__ = ["DATA_TYPES", "check_uploads", "create_chat_with_uploads", "notebook_path", "save_chat_notebook", "save_turn_notebook",
           "suggested_questions"]

DATA_TYPES = (".csv", ".tsv", ".parquet", ".xlsx", ".json")


def check_uploads(names: Sequence[str], contents: Sequence[bytes], limit: int) -> list[tuple[str, bytes]]:
    """The uploads as (safe file name, bytes), or DsagentError naming the first file refused and why."""

    files = []
    for name, data in zip(names, contents):
        base = Path(str(name).replace("\\", "/")).name
        suffix = Path(base).suffix.lower()
        if suffix not in DATA_TYPES:
            raise DsagentError(f"{base!r} is not a data file the agents read ({suffix or 'no extension'})",
                               hint=f"upload one of: {', '.join(DATA_TYPES)}")
        if len(data) > limit:
            raise DsagentError(f"{base!r} is {len(data) / 2**20:.1f} MiB, over the upload limit of {limit / 2**20:.1f} MiB",
                               hint="upload a smaller file, or raise the dashboard_upload_limit setting (DSAGENT_DASHBOARD_UPLOAD_LIMIT)")
        if not data:
            raise DsagentError(f"{base!r} is empty", hint="upload a file with data in it")
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", base).strip("._") or f"data{suffix}"
        files.append((safe, data))
    return files


def create_chat_with_uploads(store: "Store", name: str, files: list[tuple[str, bytes]], *, graph: str, backend: str) -> "ChatRecord":
    """A new chat holding the uploaded files (written to a temp folder, copied in by ``create_chat``, removed)."""
    from dsagent.graphs.chat import create_chat

    folder = Path(tempfile.mkdtemp(prefix="dsagent-upload-", dir=store.workspace.home))
    try:
        paths = []
        for file_name, data in files:
            path = folder / file_name
            if path.exists():
                path = folder / f"{len(paths) + 1}-{file_name}"
            path.write_bytes(data)
            paths.append(path)
        record = create_chat(store, name, paths, graph=graph, backend=backend)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    # the uploads' temp paths are gone: the chat's own copies are the sources from now on
    return record


def suggested_questions(record: "ChatRecord", data_dir: Path, limit: int = 4) -> list[str]:
    """First questions from the first dataset's columns (read from a few hundred rows), or general ones."""
    import pandas as pd

    if not record.datasets:
        return ["What can you do with data? Make a small example table and plot it."]
    ref = record.datasets[0]
    path = data_dir / ref["path"]
    try:
        frame = _sample(pd, path)
    except Exception:  # an unreadable file: the agent's own profile will say why
        return [f"Load {ref['path']} and describe its columns.", f"What is in {ref['path']}? Summarize it."]
    numeric = [c for c in frame.columns if pd.api.types.is_numeric_dtype(frame[c])]
    other = [c for c in frame.columns if c not in numeric]
    questions = [f"Describe {ref['path']}: its {frame.shape[1]} columns, their types and missing values."]
    if numeric:
        questions.append(f"Plot the distribution of {numeric[0]}.")
    if len(numeric) >= 2:
        questions.append(f"How does {numeric[1]} relate to {numeric[0]}? Show a scatter plot.")
    if other and numeric:
        questions.append(f"Which {other[0]} has the highest average {numeric[0]}?")
    return questions[:limit]


def _sample(pd, path: Path):
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        return pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",", nrows=500)
    if suffix == ".parquet":
        return pd.read_parquet(path).head(500)
    if suffix == ".xlsx":
        return pd.read_excel(path, nrows=500)
    return pd.read_json(path).head(500)


def notebook_path(store: "Store", name: str) -> Path:
    """``<workspace>/notebooks/<safe name>.ipynb``: the folder the Notebooks page lists."""
    safe = re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-")[:80] or "chat"
    return store.workspace.home / "notebooks" / f"{safe}.ipynb"


def save_chat_notebook(store: "Store", chat_id: int) -> Path:
    """The whole chat as one notebook with a parameters cell, into the Notebooks page's folder."""
    from dsagent.graphs.chat_export import export_chat

    record = store.chats.get(chat_id)
    return export_chat(store, chat_id, path=notebook_path(store, f"chat-{record.name}"))


def save_turn_notebook(store: "Store", chat_id: int, run_id: int) -> Path:
    """One turn's own notebook (the run's ``notebook`` artifact, re-runnable with its parameters cell) into that folder."""
    record = store.chats.get(chat_id)
    page = store.search_artifacts(run_id=run_id, kind="notebook", limit=50)
    if not page.items:
        raise DsagentError(f"turn run {run_id} has no notebook yet", hint="wait until the turn has ended, then save it")
    latest = max(page.items, key=lambda a: a.id)
    target = notebook_path(store, f"chat-{record.name}-turn-{run_id}")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(store.read_artifact(latest.id)[1])
    return target
