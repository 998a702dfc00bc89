"""The comparison of a sweep: one row per child, its parameters, the scalars it recorded, status and duration.

``compare_runs(store, ids)`` makes the same table for runs picked by hand (the
Notebooks page compares runs of one notebook with it).

``batch_table(store, batch_id)`` is what ``dsagent batch compare`` prints and
what the dashboard's batch page shows; ``save_table`` writes it as CSV or
Parquet, to a file and as an artifact of the batch run.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from dsagent.errors import DsagentError

if TYPE_CHECKING:
    import pandas

    from dsagent.artifacts.models import Artifact, Run
    from dsagent.artifacts.store import Store

__all__ = ["BatchTable", "batch_table", "compare_runs", "save_table", "table_bytes", "batch_children"]

_PAGE = 500


@dataclass
class BatchTable:
    """Rows of a sweep's children (``run_id``, parameters, ``status``, ``seconds``, scalars, ``error``);
    ``batch`` is None for a comparison of runs picked by hand (``compare_runs``)."""

    batch: "Run | None"
    parameters: list[str]
    scalars: list[str]
    rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def columns(self) -> list[str]:
        return ["run_id", *self.parameters, "status", "seconds", *self.scalars, "error"]

    def to_frame(self) -> "pandas.DataFrame":
        import pandas

        return pandas.DataFrame([[row.get(c) for c in self.columns] for row in self.rows], columns=self.columns)

    def format(self, *, max_width: int = 40) -> str:
        """An aligned text table for a terminal."""
        cells = [[_cell(row.get(c), max_width) for c in self.columns] for row in self.rows]
        header = [c.upper() if c in ("run_id", "status", "seconds", "error") else c for c in self.columns]
        widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(header)]
        lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip()]
        lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in cells]
        return "\n".join(lines)


def _cell(value: Any, width: int) -> str:
    if value is None:
        return "-"
    text = f"{value:.4g}" if isinstance(value, float) else str(value)
    text = text.replace("\n", " ")
    return text if len(text) <= width else text[: width - 1] + "…"


def batch_children(store: "Store", batch_id: int) -> list["Run"]:
    """All children of a batch, oldest first (read page by page)."""
    children: list["Run"] = []
    cursor = None
    while True:
        page = store.list_runs(parent_id=batch_id, limit=_PAGE, cursor=cursor)
        children.extend(page.items)
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    return sorted(children, key=lambda r: r.id)


def batch_table(store: "Store", batch_id: int) -> BatchTable:
    """The comparison table of batch ``batch_id`` (a ``batch`` run)."""
    batch = store.get_run(batch_id)
    if batch.kind != "batch":
        raise DsagentError(f"run {batch_id} is a {batch.kind} run, not a batch", hint="`dsagent runs ls --kind batch` lists batches",
                           reason="not_batch")
    return _table(batch, batch_children(store, batch_id), store.child_records(batch_id))


def compare_runs(store: "Store", run_ids: Sequence[int]) -> BatchTable:
    """The same table for any runs (say, runs of one notebook a user picked), in the order given; ``batch`` is None."""
    runs = [store.get_run(int(i)) for i in run_ids]
    return _table(None, runs, store.run_records([r.id for r in runs]))


def _table(batch: "Run | None", runs: Sequence["Run"], records: Mapping[int, Mapping[str, Any]]) -> BatchTable:
    parameters: list[str] = []
    scalars: list[str] = []
    for run in runs:
        parameters.extend(k for k in run.params if k not in parameters)
        scalars.extend(k for k in records.get(run.id, {}) if k not in scalars)
    clash = set(parameters) | {"run_id", "status", "seconds", "error"}
    rows = []
    for run in runs:
        seconds = (run.finished - run.started).total_seconds() if run.finished and run.started else None
        row: dict[str, Any] = {"run_id": run.id, **run.params, "status": run.status,
                               "seconds": round(seconds, 3) if seconds is not None else None, "error": run.error}
        for name, value in records.get(run.id, {}).items():
            row[f"{name} (recorded)" if name in clash else name] = value
        rows.append(row)
    scalars = [f"{s} (recorded)" if s in clash else s for s in scalars]
    return BatchTable(batch, parameters, scalars, rows)


def table_bytes(table: BatchTable, fmt: str) -> tuple[str, str, bytes]:
    """The table as a ``csv`` or ``parquet`` file: (file name, mime type, bytes)."""
    from dsagent.artifacts.capture import PARQUET_MIME

    if table.batch is None:
        raise DsagentError("only a batch's comparison is kept as an artifact (it belongs to the batch run)",
                           hint="use table.to_frame() to save a comparison of runs picked by hand")
    frame = table.to_frame()
    name = f"batch-{table.batch.id}-comparison.{fmt}"
    if fmt == "csv":
        return name, "text/csv", frame.to_csv(index=False).encode("utf-8")
    if fmt == "parquet":
        buffer = io.BytesIO()
        frame.astype({c: "string" for c in frame.columns if frame[c].dtype == object}).to_parquet(buffer, index=False)
        return name, PARQUET_MIME, buffer.getvalue()
    raise DsagentError(f"unknown table format {fmt!r}", hint="use csv or parquet")


def save_table(store: "Store", table: BatchTable, fmt: str, path: str | Path | None = None) -> "Artifact":
    """Write the table as ``csv`` or ``parquet`` (to ``path`` if given) and store it as an artifact of the batch run."""
    from dsagent.artifacts.models import NewArtifact

    name, mime, data = table_bytes(table, fmt)
    item = NewArtifact(name, "table", mime, data, metadata={"rows": len(table.rows), "columns": len(table.columns)})
    if path is not None:
        Path(path).write_bytes(data)
    return store.add_artifacts(table.batch.id, [item])[0]
