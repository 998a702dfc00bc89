"""Same notebook out as papermill's own engine: the golden notebooks of tests/files/ run through papermill's
nbclient engine and ``--engine dsagent`` on `local` and `sandbox`, saved notebooks compared (docs/notebook-parity.md).

Each nbclient reference run happens once per module and serves both backends.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from dsagent.testing.notebook_parity import PARITY_NOTEBOOKS, ReferenceRuns, assert_same_notebook, run_engine

FILES = Path(__file__).parent.parent / "files"


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The nbclient engine's saved notebook for a golden notebook (and engine options), run on first use."""
    return ReferenceRuns(FILES, tmp_path_factory.mktemp("nbclient"))


@pytest.mark.parametrize("backend", ["local", "sandbox"])
@pytest.mark.parametrize("name", PARITY_NOTEBOOKS)
def test_dsagent_engine_saves_the_notebook_nbclient_saves(reference, tmp_path, name, backend):
    ours = run_engine(FILES / f"{name}.ipynb", tmp_path / f"{name}.ipynb", "dsagent", backend=backend, cwd=tmp_path)
    assert_same_notebook(reference(name), ours)


@pytest.mark.parametrize("options", [
    {"allow_errors": True, "record_timing": False},
    {"allow_error_names": ["ValueError"], "skip_cells_with_tag": "parameters"},
], ids=lambda o: "+".join(o))
def test_nbclient_options_passed_through_papermill_apply_alike(reference, tmp_path, options):
    ours = run_engine(FILES / "parity_failure.ipynb", tmp_path / "out.ipynb", "dsagent", backend="local", cwd=tmp_path, **options)
    assert_same_notebook(reference("parity_failure", **options), ours)


def test_the_golden_notebooks_exercise_what_they_claim(reference):
    """Guards the comparisons above against passing on notebooks that no longer show the behaviour."""
    displays = reference("parity_displays").nb
    first = next(c for c in displays.cells if "display_id=True" in c.source and "between" in c.source)
    assert [o.data["text/plain"] for o in first.outputs if o.output_type == "display_data"] == ["'second'", "<IPython.core.display.Markdown object>"]
    cleared = next(c for c in displays.cells if "cleared later" in c.source)
    assert [o.get("text") for o in cleared.outputs] == ["after clear\n"]
    tags = reference("parity_tags")
    skipped = next(c for c in tags.nb.cells if "skip-execution" in c.metadata.get("tags", []))
    assert skipped.execution_count is None and tags.ename == "ZeroDivisionError"  # papermill flags it after the run
    assert "the run went on 3" in tags.nb.cells[-1].outputs[0].text
    history = reference("parity_history").nb
    assert "True 1 hm = get_ipython()" in history.cells[-2].outputs[0].text  # an enabled, in-memory history, session 1
    assert "x = n * 2" in history.cells[-1].outputs[0].text
