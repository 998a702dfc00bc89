"""Same notebook out as papermill's own engine: the golden notebooks of tests/files/ run through papermill's
nbclient engine and ``--engine dsagent`` on `local` and `sandbox`, saved notebooks compared (docs/notebook-parity.md).

Each nbclient reference run happens once per test session (``parity_reference``) and serves every backend.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

from dsagent.testing.notebook_parity import PARITY_NOTEBOOKS, assert_same_notebook, run_engine

pytest_plugins = ["dsagent.testing.notebook_parity"]

FILES = Path(__file__).parent.parent / "files"




#: on `sandbox`, the notebooks whose outcome depends on what the kernel delivers (tags and autosave are the engine's own logic)
SANDBOX = ("parity_displays", "parity_history", "parity_failure")


@pytest.mark.parametrize(("name", "backend"), [(n, "local") for n in PARITY_NOTEBOOKS] + [(n, "sandbox") for n in SANDBOX])
def test_dsagent_engine_saves_the_notebook_nbclient_saves(parity_reference, tmp_path, name, backend):
    ours = run_engine(FILES / f"{name}.ipynb", tmp_path / f"{name}.ipynb", "dsagent", backend=backend, cwd=tmp_path)
    assert_same_notebook(parity_reference(name), ours)


@pytest.mark.parametrize(("name", "options"), [
    ("parity_failure", {"allow_errors": True, "record_timing": False}),
    ("parity_failure", {"allow_error_names": ["ValueError"], "skip_cells_with_tag": "parameters"}),
    ("parity_tags", {"force_raise_errors": True}),
], ids=lambda o: "+".join(o) if isinstance(o, dict) else o)
def test_nbclient_options_passed_through_papermill_apply_alike(parity_reference, tmp_path, name, options):
    ours = run_engine(FILES / f"{name}.ipynb", tmp_path / "out.ipynb", "dsagent", backend="local", cwd=tmp_path, **options)
    assert_same_notebook(parity_reference(name, **options), ours)


def _joined_streams(logged: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Consecutive output records of one level as one: how a kernel splits a print into stream
    messages depends on timing (``print('exit', 0)`` may arrive as 'exit' then ' 0\n'), in both engines."""
    joined: list[tuple[str, str]] = []
    for level, message in logged:
        marker = message.startswith(("Executing Cell", "Ending Cell"))
        if joined and not marker and joined[-1][0] == level and not joined[-1][1].startswith(("Executing Cell", "Ending Cell")):
            joined[-1] = (level, joined[-1][1] + message)
        else:
            joined.append((level, message))
    return joined


def test_log_output_stdout_stderr_files_and_progress_bar_alike(tmp_path, caplog, capfd):
    """``--log-output``, ``--stdout-file``/``--stderr-file`` and ``--progress-bar``: what each engine logs and writes."""
    seen = {}
    for engine in ("nbclient", "dsagent"):
        folder = tmp_path / engine
        folder.mkdir()
        caplog.clear()
        capfd.readouterr()
        with caplog.at_level(logging.INFO, logger="papermill"), open(folder / "out.txt", "w") as out, open(folder / "err.txt", "w") as err:
            run_engine(FILES / "parity_failure.ipynb", folder / "nb.ipynb", engine, backend="local" if engine == "dsagent" else None,
                       cwd=folder, log_output=True, progress_bar=True, stdout_file=out, stderr_file=err)
        logged = _joined_streams([(r.levelname, r.getMessage().replace(str(folder), "<dir>")) for r in caplog.records if r.name.startswith("papermill")])
        bars = re.findall(r"Executing: +\d+%\|[^|]*\| (\d+/\d+)", capfd.readouterr().err)
        seen[engine] = (logged, (folder / "out.txt").read_text(), (folder / "err.txt").read_text(), bars[-1:])
    for ours, theirs in zip(seen["dsagent"], seen["nbclient"]):
        assert ours == theirs
    logged, out, err, bars = seen["dsagent"]
    assert ("INFO", "30") in logged and ("WARNING", "warned\n") in logged and out == "before\nexit 0\n" and err == "warned\n"
    assert bars == ["6/7"]  # stopped at the failing cell, 6 of 7


def test_the_golden_notebooks_exercise_what_they_claim(parity_reference):
    """Guards the comparisons above against passing on notebooks that no longer show the behaviour."""
    displays = parity_reference("parity_displays").nb
    first = next(c for c in displays.cells if "display_id=True" in c.source and "between" in c.source)
    assert [o.data["text/plain"] for o in first.outputs if o.output_type == "display_data"] == ["'second'", "<IPython.core.display.Markdown object>"]
    cleared = next(c for c in displays.cells if "cleared later" in c.source)
    assert [o.get("text") for o in cleared.outputs] == ["after clear\n"]
    tags = parity_reference("parity_tags")
    skipped = next(c for c in tags.nb.cells if "skip-execution" in c.metadata.get("tags", []))
    assert skipped.execution_count is None and tags.ename == "ZeroDivisionError"  # papermill flags it after the run
    assert "the run went on 3" in tags.nb.cells[-3].outputs[0].text and tags.nb.cells[-1].metadata.papermill.status == "pending"
    history = parity_reference("parity_history").nb
    assert "True 1 hm = get_ipython()" in history.cells[-2].outputs[0].text  # an enabled, in-memory history, session 1
    assert "x = n * 2" in history.cells[-1].outputs[0].text
    autosave = parity_reference("parity_autosave").nb.cells[-1].outputs[0].text
    assert "completed 3 [['saved before the next cell starts\\n']]" in autosave and "running None []" in autosave
