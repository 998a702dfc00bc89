"""An agent run as a notebook anyone can re-run (``dsagent run`` / papermill).

The first cell is tagged ``parameters`` and holds the inputs (dataset paths,
the question), so ``dsagent run run-12.ipynb -p data other.csv`` repeats the
analysis on other data. Then the task and plan as markdown, every cell that
ran cleanly with its outputs (failed attempts are shown as markdown, so a
re-run does not stop at them), the answer and the review findings.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from dsagent.graphs.state import AgentState, CellRecord, DatasetRef

__all__ = ["export_notebook", "parameters_code", "work_cells"]


def parameters_code(datasets: Sequence[DatasetRef], task: str, *, use_source: bool) -> str:
    """The parameters cell: one variable per dataset, plus the question."""
    lines = ["# Parameters: `dsagent run -p NAME VALUE` (or papermill) replace these; give data files as absolute",
             "# paths (a re-run's kernel starts in this notebook's folder)"]
    for ref in datasets:
        lines.append(f"{ref['param']} = {(ref['source'] if use_source else ref['path'])!r}")
    lines.append(f"question = {task!r}")
    return "\n".join(lines)


def _outputs(cell: CellRecord) -> list[Any]:
    kept = []
    for out in cell.get("outputs", []):
        fields = {k: v for k, v in out.items() if k != "output_type"}
        if out.get("output_type") in ("execute_result", "display_data"):
            fields.setdefault("metadata", {})
        kept.append(new_output(out["output_type"], **fields))
    return kept


def _failed_attempt(cell: CellRecord) -> Any:
    error = next((o for o in cell.get("outputs", []) if o.get("output_type") == "error"), None)
    why = f"`{error.get('ename')}: {error.get('evalue')}`" if error else cell.get("status", "failed")
    return new_markdown_cell(f"*Attempt that failed (cell {cell['cell']}, {cell.get('status')}): {why}*\n\n"
                             f"```python\n{cell.get('code', '')}\n```")


def _findings_markdown(reviews: Sequence[dict[str, Any]]) -> str:
    lines = ["## Review"]
    for number, review in enumerate(reviews, 1):
        lines.append(f"\n**Review {number}: {review.get('verdict')}**\n")
        for f in review.get("findings", []):
            where = f"cell {f['cell']}" if f.get("cell") is not None else "answer"
            fix = f" — fix: {f['fix']}" if f.get("fix") else ""
            lines.append(f"- [{f['severity']}] {where}: {f['reason']}{fix}")
        if not review.get("findings"):
            lines.append("- no findings")
    return "\n".join(lines)


def export_notebook(state: AgentState, *, run_id: int | None = None, kernel_name: str = "python3") -> nbformat.NotebookNode:
    """The run's notebook, assembled from its state (outputs as they were, nothing re-executed)."""
    task = state.get("task", "")
    nb = new_notebook()
    nb.metadata["kernelspec"] = {"name": kernel_name, "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    nb.metadata["dsagent"] = {"run_id": run_id, "status": state.get("status"), "datasets": list(state.get("datasets", []))}
    params = new_code_cell(parameters_code(state.get("datasets", []), task, use_source=True))
    params.metadata["tags"] = ["parameters"]
    nb.cells.append(params)
    nb.cells.extend(work_cells(state))
    nbformat.validate(nb)
    return nb


def work_cells(state: AgentState, *, heading: str = "#") -> list[Any]:
    """One run's work as notebook cells: task, plan, the clean cells with outputs, failed attempts as
    markdown, answer, review. ``heading``: the task's markdown level (a chat's turns use ``##``)."""
    cells: list[Any] = [new_markdown_cell(f"{heading} Task\n\n{state.get('task', '')}")]
    sub = heading + "#"
    if state.get("plan"):
        cells.append(new_markdown_cell(f"{sub} Plan\n\n{state['plan']}"))
    for cell in state.get("cells", []):
        if cell.get("role") == "setup" and cell.get("kind") == "code" and cell["cell"] == 0:
            continue  # the parameters cell above replaces it
        if cell.get("status") != "ok":
            cells.append(_failed_attempt(cell))
            continue
        code = new_code_cell(cell.get("code", ""), outputs=_outputs(cell), execution_count=cell.get("execution_count"))
        code.metadata["dsagent"] = {"cell": cell["cell"], "role": cell.get("role"), "artifacts": cell.get("artifacts", [])}
        cells.append(code)
    if state.get("answer"):
        cells.append(new_markdown_cell(f"{sub} Answer\n\n{state['answer']}"))
    if state.get("reviews"):
        cells.append(new_markdown_cell(_findings_markdown(state["reviews"]).replace("## Review", f"{sub} Review", 1)))
    if state.get("status") == "failed" and state.get("error"):
        cells.append(new_markdown_cell(f"**The run failed:** {state['error']}"))
    return cells
