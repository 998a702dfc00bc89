"""Review any notebook (or an agent run's notebook): ``dsagent review RUN|NOTEBOOK``.

The notebook's code cells and their saved outputs become the cells the
reviewer sees; its markdown is the claims to check (an agent notebook's
"## Answer" cell when there is one). Nothing is executed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nbformat

from dsagent.graphs.state import CellRecord
from dsagent.graphs.tools import render_outputs, trim

__all__ = ["NotebookReview", "cells_of", "review_notebook"]


@dataclass
class _ReviewContext:
    """The little of an AgentContext that ``review_work`` uses."""

    llm: Any
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    async def on_llm_event(self, kind: str, data: dict[str, Any]) -> None:
        self.events.append((kind, data))


@dataclass
class NotebookReview:
    verdict: str
    findings: list[dict[str, Any]]
    task: str
    source: str


def cells_of(nb: nbformat.NotebookNode) -> tuple[list[CellRecord], str, str]:
    """(cells, task, claims) of a notebook as the reviewer reads them."""
    cells: list[CellRecord] = []
    markdown: list[str] = []
    task = ""
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "markdown":
            text = cell.source.strip()
            if text.startswith("# Task"):
                task = text.removeprefix("# Task").strip()
            elif not text.startswith(("## Review", "## Plan")):
                markdown.append(text)
            continue
        if cell.cell_type != "code":
            continue
        outputs = [dict(o) for o in cell.get("outputs", [])]
        failed = any(o.get("output_type") == "error" for o in outputs)
        images = [{"id": None, "name": f"cell-{index}-image", "kind": "image"} for o in outputs
                  if any(m.startswith("image/") for m in o.get("data", {}))]
        cells.append(CellRecord(cell=index, kind="code", code=cell.source, status="error" if failed else "ok", outputs=outputs,
                                artifacts=images, observation=trim(render_outputs(outputs))[0], role="notebook"))
    answer = next((m.removeprefix("## Answer").strip() for m in markdown if m.startswith("## Answer")), "\n\n".join(markdown))
    return cells, task, answer


async def review_notebook(nb: nbformat.NotebookNode, llm: Any, *, task: str | None = None) -> NotebookReview:
    from dsagent.graphs.review import review_work

    cells, found_task, answer = cells_of(nb)
    task = task or found_task or "(no task given: check that the notebook's claims follow from its outputs)"
    result = await review_work(_ReviewContext(llm), task, cells, answer)
    return NotebookReview(result["verdict"], result["findings"], task, result["source"])


def load_notebook(target: str, settings: Any) -> tuple[nbformat.NotebookNode, str]:
    """A notebook from a path, or the ``notebook`` artifact of a run id."""
    from dsagent.errors import NotebookError

    if target.isdigit() and not Path(target).exists():
        from dsagent.artifacts.store import Store

        with Store.open(settings=settings) as store:
            run_id = int(target)
            store.get_run(run_id)  # NotFound says so clearly
            page = store.list_artifacts(run_id=run_id, kind="notebook", limit=1)
            if not page.items:
                raise NotebookError(f"run {run_id} has no notebook artifact", hint="review a notebook file instead", path=target,
                                    reason="not_found")
            return nbformat.reads(store.read_bytes(page.items[0].id).decode("utf-8"), as_version=4), f"run {run_id}"
    path = Path(target)
    if not path.is_file():
        raise NotebookError(f"{target!r} is neither a notebook file nor a run id", hint="pass a .ipynb path or a run id",
                            path=target, reason="not_found")
    try:
        return nbformat.read(path, as_version=4), str(path)
    except Exception as exc:
        raise NotebookError(f"{target} is not a notebook: {exc}", hint="pass a .ipynb file", path=target, reason="not_a_notebook") from exc
