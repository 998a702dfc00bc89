"""bench/agent.py runs end to end and reports its figures with the target (no timing assertions)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "agent.py"


def test_quick_run_prints_one_json_object_with_the_target():
    done = subprocess.run([sys.executable, str(BENCH), "--quick"], capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    graph = report["analysis_graph"]
    assert graph["overhead_ms_per_step"] > 0 and graph["fixed_overhead_ms_per_run"] > 0
    assert report["target_ms_per_step"] == 20.0 and isinstance(report["meets_target"], bool)
    assert report["plain_loop"]["overhead_ms_per_step"] >= 0
    assert "analysis_graph:" in done.stderr
    prompts = report["prompt_tokens_by_step"]["tokens"]  # what each model call of a data question sends
    assert list(prompts) == ["plan", "act 1", "act 2", "act 3", "review"] and all(n > 100 for n in prompts.values())
    assert prompts["act 3"] > prompts["act 1"]  # the history grows with each turn
