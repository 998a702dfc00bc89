"""Same notebook out as papermill's own engine on the remote backends: a real Kernel Gateway on loopback
(`jupyter`) and the E2B SDK in debug mode against the loopback server (`e2b`). tests/runs/test_engine_parity.py
does `local` and `sandbox`; what a backend cannot deliver is declared in its ``unsupported`` and skipped here
with that reason (docs/notebook-parity.md)."""

from __future__ import annotations

from pathlib import Path

import pytest
from remote_servers import RunningServer, kernel_gateway  # noqa: F401 (fixture)

from dsagent.kernel_gateway.registry import backend_registry
from dsagent.testing.notebook_parity import assert_same_notebook, run_engine

pytest_plugins = ["e2b_fixtures", "dsagent.testing.notebook_parity"]

FILES = Path(__file__).parent.parent / "files"
#: what each golden notebook needs from a backend (capability names of ``KernelBackend.unsupported``);
#: parity_tags is the engine's own logic, compared on local and sandbox only (kernel starts here cost seconds)
NEEDS = {"parity_displays": ("display_update", "clear_output"), "parity_history": ("ipython_history",), "parity_failure": ()}


# the servers are reached through getfixturevalue, which conftest's grouping cannot see: the params say it
@pytest.fixture(params=[pytest.param("jupyter", marks=pytest.mark.xdist_group("jupyter-servers")),
                        pytest.param("e2b", marks=[pytest.mark.e2b, pytest.mark.xdist_group("e2b")])])
def backend(request, monkeypatch) -> str:
    """The backend's name, with the environment that points it at its loopback server."""
    if request.param == "jupyter":
        server: RunningServer = request.getfixturevalue("kernel_gateway")
        monkeypatch.setenv("DSAGENT_JUPYTER_URL", server.url)
        monkeypatch.setenv("DSAGENT_JUPYTER_TOKEN", server.token)
    else:
        request.getfixturevalue("e2b_debug")
    return request.param


@pytest.mark.parametrize("name", sorted(NEEDS))
def test_dsagent_engine_saves_the_notebook_nbclient_saves(parity_reference, tmp_path, name, backend):
    unsupported = backend_registry.get(backend).unsupported
    for capability in NEEDS.get(name, ()):
        if capability in unsupported:
            pytest.skip(f"{backend} does not support {capability}: {unsupported[capability]}")
    ours = run_engine(FILES / f"{name}.ipynb", tmp_path / f"{name}.ipynb", "dsagent", backend=backend, cwd=tmp_path)
    # E2B's stream carries an error's traceback as one string, not the kernel's list of lines
    assert_same_notebook(parity_reference(name), ours, tracebacks=backend != "e2b")
