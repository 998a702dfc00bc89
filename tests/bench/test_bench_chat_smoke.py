"""bench/chat.py's library part runs end to end against the agents as they are (no timing assertions).

The benchmark scripts the LLM's replies; when the agents' contract changes (plans became structured and fail
closed) a stale script makes every turn fail, and the benchmark stopped at its first turn unnoticed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "chat.py"


def test_quick_library_run_prints_its_figures():
    done = subprocess.run([sys.executable, str(BENCH), "--quick", "--no-browser"], capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["turns"] == 2 and report["first_step_ms"] > 0 and report["chat_turn_ms"] > 0 and report["plain_run_ms"] > 0
    assert report["replayed_cells"] > 0 and report["restore_ms"] > 0
