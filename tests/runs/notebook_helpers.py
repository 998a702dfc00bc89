"""Helpers for notebook-run tests: write small notebooks, run the real CLIs, read the workspace store."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import nbformat
import pytest

from dsagent.artifacts.store import Store
from dsagent.settings import Settings

BIN = Path(sys.executable).parent
KERNELSPEC = {"name": "python3", "display_name": "Python 3", "language": "python"}


def write_notebook(path: Path, *cells: str, params: str | None = None, kernelspec: dict | None = KERNELSPEC) -> Path:
    """A notebook with an optional tagged ``parameters`` cell first, then ``cells``."""
    nb = nbformat.v4.new_notebook()
    if kernelspec is not None:
        nb.metadata["kernelspec"] = kernelspec
    if params is not None:
        cell = nbformat.v4.new_code_cell(params)
        cell.metadata["tags"] = ["parameters"]
        nb.cells.append(cell)
    nb.cells.extend(nbformat.v4.new_code_cell(source) for source in cells)
    nbformat.write(nb, path)
    return path


def cli_env(home: Path) -> dict[str, str]:
    return {**os.environ, "DSAGENT_HOME": str(home), "PYDEVD_DISABLE_FILE_VALIDATION": "1"}


def run_cli(home: Path, *args: str, timeout: float = 120, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``dsagent ARGS`` in a fresh process on the test's workspace (in ``cwd``, else this process's folder)."""
    return subprocess.run([str(BIN / "dsagent"), *args], env=cli_env(home), capture_output=True, text=True, timeout=timeout, check=False,
                          cwd=cwd)


def read_runs(home: Path) -> list[Any]:
    with Store.open(settings=Settings(home=str(home))) as store:
        return store.list_runs(limit=100).items


def run_artifacts(home: Path, run_id: int) -> tuple[list[Any], dict[int, bytes]]:
    """A run's artifacts and their bytes."""
    with Store.open(settings=Settings(home=str(home))) as store:
        items = store.list_artifacts(run_id=run_id, limit=500).items
        return items, {a.id: store.read_bytes(a.id) for a in items}


def statuses(nb: Any) -> list[str]:
    return [cell.metadata.get("papermill", {}).get("status") for cell in nb.cells]


@pytest.fixture
def settings(workspace_home: Path) -> Settings:
    return Settings(home=str(workspace_home))
