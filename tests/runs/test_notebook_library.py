"""The notebooks the dashboard lists and accepts (no kernel, no browser), the parameter form's typing, the launch
environment a dashboard-started CLI reads, and the comparison of runs picked by hand."""

from __future__ import annotations

import json

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from dsagent.artifacts import Store
from dsagent.errors import NotebookError, NotFound
from dsagent.runs.batch_compare import compare_runs
from dsagent.runs.launch_env import LAUNCHED_BY_ENV, RUN_ID_FILE_ENV, take_launch_env
from dsagent.runs.notebook_library import find_notebook, list_notebooks, safe_notebook_name, save_uploaded_notebook
from dsagent.settings import Settings
from dsagent.workspace import Workspace


def _nb_bytes(source: str = "x = 1") -> bytes:
    cell = new_code_cell(source)
    cell.metadata["tags"] = ["parameters"]
    return nbformat.writes(new_notebook(cells=[cell])).encode()


@pytest.fixture
def settings(tmp_path):
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    for name in ("b.ipynb", "a.ipynb", "c.ipynb"):
        (shipped / name).write_bytes(_nb_bytes())
    (shipped / "notes.txt").write_text("not a notebook")
    return Settings(home=str(tmp_path / "ws"), notebook_folders=f"{shipped}, {tmp_path / 'missing'}")


def test_lists_workspace_then_shipped_by_name_paginated(settings, tmp_path):
    save_uploaded_notebook("z.ipynb", _nb_bytes(), settings)
    first = list_notebooks(settings, limit=2)
    assert [e.name for e in first.items] == ["z.ipynb", "a.ipynb"] and first.total == 4
    assert first.items[0].source == "workspace" and first.items[1].source == str(tmp_path / "shipped")
    assert [e.name for e in list_notebooks(settings, offset=2, limit=2).items] == ["b.ipynb", "c.ipynb"]
    assert [e.name for e in list_notebooks(settings, text="B.").items] == ["b.ipynb"]


def test_find_only_inside_the_notebook_folders(settings, tmp_path):
    assert find_notebook(tmp_path / "shipped" / "a.ipynb", settings).name == "a.ipynb"
    assert find_notebook("a.ipynb", settings).source == str(tmp_path / "shipped")
    outside = tmp_path / "elsewhere.ipynb"
    outside.write_bytes(_nb_bytes())
    for path in (outside, tmp_path / "shipped" / ".." / "elsewhere.ipynb", tmp_path / "shipped" / "notes.txt", "/etc/passwd"):
        with pytest.raises(NotFound):
            find_notebook(path, settings)


def test_upload_is_checked_named_safely_and_never_overwrites_unasked(settings):
    assert safe_notebook_name("../../etc/my report (v2).ipynb") == "my_report_v2.ipynb"
    entry = save_uploaded_notebook("../../evil name.ipynb", _nb_bytes("x = 1"), settings)
    assert entry.path == Workspace.from_settings(settings).notebooks_dir / "evil_name.ipynb"
    with pytest.raises(NotebookError) as info:
        save_uploaded_notebook("evil name.ipynb", _nb_bytes("x = 2"), settings)
    assert info.value.reason == "exists" and b"x = 1" in entry.path.read_bytes()
    save_uploaded_notebook("evil name.ipynb", _nb_bytes("x = 2"), settings, overwrite=True)
    assert b"x = 2" in entry.path.read_bytes()
    for data, reason in ((b"{not json", "not_a_notebook"), (b'{"cells": "nope", "nbformat": 4}', "not_a_notebook"),
                         (b"x" * 2048, "too_large")):
        with pytest.raises(NotebookError) as info:
            save_uploaded_notebook("bad.ipynb", data, settings.replace(notebook_upload_max_bytes=1024))
        assert info.value.reason == reason
    assert sorted(p.name for p in entry.path.parent.iterdir()) == ["evil_name.ipynb"]  # nothing else written


def test_launch_env_is_taken_out_and_reports_the_run_id(tmp_path, monkeypatch):
    id_file = tmp_path / "x.run"
    monkeypatch.setenv(LAUNCHED_BY_ENV, json.dumps({"user": "ann", "via": "dashboard"}))
    monkeypatch.setenv(RUN_ID_FILE_ENV, str(id_file))
    info = take_launch_env()
    assert info.launched == {"user": "ann", "via": "dashboard"}
    assert LAUNCHED_BY_ENV not in __import__("os").environ  # kernels started later do not inherit it
    info.report(42)
    assert json.loads(id_file.read_text()) == {"run_id": 42}
    assert take_launch_env().launched is None


def test_compare_runs_uses_the_batch_table_with_records(tmp_path):
    settings = Settings(home=str(tmp_path / "ws"))
    with Store.open(Workspace.from_settings(settings), settings) as store:
        a = store.create_run("notebook", title="t.ipynb", params={"alpha": 0.1})
        b = store.create_run("notebook", title="t.ipynb", params={"alpha": 0.5, "extra": "x"})
        store.append_events(a.id, [("record", {"name": "score", "value": 1.5}), ("record", {"name": "score", "value": 2.5})])
        store.append_events(b.id, [("record", {"name": "status", "value": "clash"})])
        store.update_run_status(a.id, "succeeded")
        table = compare_runs(store, [b.id, a.id])
    assert [r["run_id"] for r in table.rows] == [b.id, a.id] and table.batch is None
    assert table.parameters == ["alpha", "extra"] and table.scalars == ["status (recorded)", "score"]
    assert table.rows[1]["score"] == 2.5 and table.rows[1]["status"] == "succeeded"
    assert table.rows[0]["status (recorded)"] == "clash" and table.rows[0]["alpha"] == 0.5
