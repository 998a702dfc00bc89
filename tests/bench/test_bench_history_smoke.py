"""bench/history.py runs end to end, launches each variant as it says, and reports the per-cell cost (no timing assertions)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "history.py"


def test_quick_run_prints_the_cost_of_in_memory_history():
    done = subprocess.run([sys.executable, str(BENCH), "--quick"], capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    for cell in ("1+1", "ten_lines"):
        figures = report["cells"][cell]
        assert figures["history_disabled_median_ms"] > 0 and figures["history_in_memory_median_ms"] > 0
        assert figures["ratio"] > 0 and "cost_per_cell_ms" in figures
    assert report["shell_cpu"]["history_disabled_cpu_us_per_cell"] > 0 and "cost_cpu_us_per_cell" in report["shell_cpu"]
    # each session really got its option (a misspelt one would only be a warning in the kernel log)
    assert "enabled=False: kernel reports 'False" in done.stderr and "hist_file=:memory:: kernel reports 'True :memory:'" in done.stderr
