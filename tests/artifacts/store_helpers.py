"""Fixtures for store tests: a real DuckDB file in a temp workspace, and worker processes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dsagent.artifacts.store import Store
from dsagent.settings import Settings

WORKERS = Path(__file__).with_name("workers.py")


@pytest.fixture
def settings(workspace_home) -> Settings:
    return Settings(home=str(workspace_home))


@pytest.fixture
def store(settings):
    with Store.open(settings=settings) as opened:
        yield opened


def start_worker(*args: str) -> subprocess.Popen:
    """A worker process (tests/artifacts/workers.py) with a JSON line on stdout."""
    return subprocess.Popen([sys.executable, str(WORKERS), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def read_report(process: subprocess.Popen, timeout: float = 60) -> dict:
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, f"worker failed ({process.returncode}): {err[-2000:]}"
    return json.loads(out.strip().splitlines()[-1])


def first_line(process: subprocess.Popen) -> dict:
    line = process.stdout.readline()
    assert line, f"worker ended early: {process.stderr.read()[-2000:]}"
    return json.loads(line)
