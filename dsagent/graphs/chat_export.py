"""A whole chat as one notebook anyone can re-run (``dsagent run`` / papermill).

The first cell is tagged ``parameters`` and holds the chat's datasets (one
variable per file, absolute paths), so ``dsagent run chat-3.ipynb -p data
other.csv`` repeats the whole conversation on other data. Then each turn in
order, as a single run's export shows it (``export.work_cells``): task, plan,
the cells that ran cleanly with their outputs (later turns use what earlier
ones made, as they did in the kernel), failed attempts as markdown, answer,
review. A cancelled turn keeps the cells it finished.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from dsagent.graphs.chat_history import load_turns
from dsagent.graphs.export import work_cells

if TYPE_CHECKING:
    from dsagent.artifacts.chats import ChatRecord
    from dsagent.artifacts.store import Store
    from dsagent.graphs.chat_history import TurnRecord

__all__ = ["chat_notebook", "export_chat"]


def _parameters(record: "ChatRecord", data_dir: Path) -> str:
    lines = ["# Parameters: `dsagent run -p NAME VALUE` (or papermill) replace these; give data files as absolute",
             "# paths (a re-run's kernel starts in this notebook's folder)"]
    for ref in record.datasets:
        source = Path(ref["source"])
        path = source if source.is_file() else data_dir / ref["path"]  # the user's file, else the chat's own copy
        lines.append(f"{ref['param']} = {str(path)!r}")
    if not record.datasets:
        lines.append("# (this chat has no datasets)")
    return "\n".join(lines)


def chat_notebook(record: "ChatRecord", turns: list["TurnRecord"], data_dir: Path, *, kernel_name: str = "python3") -> nbformat.NotebookNode:
    """The chat's notebook, assembled from its turns (outputs as they were, nothing re-executed)."""
    nb = new_notebook()
    nb.metadata["kernelspec"] = {"name": kernel_name, "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    nb.metadata["dsagent"] = {"chat_id": record.id, "chat": record.name, "datasets": record.datasets,
                              "turns": [t.run_id for t in turns]}
    params = new_code_cell(_parameters(record, data_dir))
    params.metadata["tags"] = ["parameters"]
    nb.cells.append(params)
    nb.cells.append(new_markdown_cell(f"# Chat: {record.name}\n\n{len(turns)} turn(s) with the {record.graph} agent."))
    for turn in turns:
        cells: list[Any] = work_cells(turn.as_state(), heading="##")  # type: ignore[arg-type]
        cells[0].source = f"## Turn {turn.number}: {turn.task}" + (f" ({turn.status})" if turn.status != "succeeded" else "")
        nb.cells.extend(cells)
    nbformat.validate(nb)
    return nb


def export_chat(store: "Store", chat: int | str, path: str | Path | None = None) -> Path:
    """Write the chat's notebook (default ``<workspace>/outputs/chats/chat-<id>.ipynb``) and keep it as a
    ``notebook`` artifact of the chat's run; the path written."""
    from dsagent.artifacts.models import NewArtifact
    from dsagent.graphs.chat import chat_data_dir

    record = store.chats.get(chat)
    turns = load_turns(store, record.id)
    nb = chat_notebook(record, turns, chat_data_dir(store.settings, record.id))
    text = nbformat.writes(nb)
    target = Path(path) if path is not None else store.workspace.outputs_dir / "chats" / f"chat-{record.id}.ipynb"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text, "utf-8")
    with store.transaction() as tx:
        added = tx.add_artifacts(record.id, [NewArtifact(target.name, "notebook", "application/x-ipynb+json", text.encode("utf-8"))])
        tx.append_events(record.id, [("chat_exported", {"path": str(target), "artifact": added[0].id, "turns": len(turns)})])
    return target
