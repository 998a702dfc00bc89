import pickle
import subprocess
import sys

import pytest

import dsagent
from dsagent import errors


def test_public_api_is_pinned():
    assert dsagent.__all__ == sorted(
        [
            "BackendNotFound", "CellExecutionError", "DsagentError", "Execution", "ExecutionError",
            "ExecutionTimeout", "FileInfo", "KernelBackend", "KernelDied", "KernelSession",
            "KernelStartFailed", "SETTINGS", "Settings", "Workspace", "__version__", "get_backend",
            "run_notebook", "ask", "run_batch", "record",
        ]
    )
    for name in dsagent.__all__:
        assert getattr(dsagent, name) is not None


@pytest.mark.parametrize("cls", [getattr(errors, n) for n in errors.__all__ if n != "BackendNotFound"])
def test_errors_pickle_with_their_fields(cls):
    err = cls("it broke", hint="do this", cell=3, ename="ValueError")
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is cls
    assert (back.message, back.hint, back.cell, back.ename) == ("it broke", "do this", 3, "ValueError")
    assert "hint: do this" in str(back)
    assert isinstance(back, errors.DsagentError)


def test_backend_not_found_lists_known_and_pickles():
    err = errors.BackendNotFound("nope", ["local", "e2b"])
    back = pickle.loads(pickle.dumps(err))
    assert back.name == "nope" and back.known == ["e2b", "local"]
    assert "known: e2b, local" in str(back)


def test_import_dsagent_and_cli_help_stay_lean():
    code = (
        "import sys, dsagent.cli; dsagent.cli.build_parser();"
        "heavy = [m for m in ('jupyter_client', 'zmq', 'panel', 'langgraph', 'duckdb', 'pandas', 'openai') if m in sys.modules];"
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
