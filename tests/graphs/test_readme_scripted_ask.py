"""The README's no-LLM walkthrough works as written: the scripted server from its JSON script, then `dsagent ask`."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_readme_walkthrough_with_the_scripted_server(workspace_home):
    readme = (ROOT / "README.md").read_text()
    assert "--script docs/scripted-ask.json --port 8765" in readme
    server = subprocess.Popen([sys.executable, "-m", "dsagent.testing.llm_server", "--script", "docs/scripted-ask.json", "--port", "0"],
                              cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        base_url = re.match(r"OPENAI_BASE_URL=(\S+)", server.stdout.readline()).group(1)
        env = {**os.environ, "OPENAI_BASE_URL": base_url, "OPENAI_API_KEY": "none", "DSAGENT_HOME": str(workspace_home)}
        done = subprocess.run([sys.executable, "-m", "dsagent", "ask", "Which region has the most revenue?", "--data",
                               "notebooks/data/sales.csv"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    finally:
        server.terminate()
        server.wait(timeout=10)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "North has the most revenue (98472.0)" in done.stdout and "· review: accept" in done.stdout
    assert re.search(r"artifacts: #\d+ cell-\d+-output-\d+\.png", done.stdout)
