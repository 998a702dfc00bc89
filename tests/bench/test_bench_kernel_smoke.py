"""bench/kernel.py runs end to end and reports every figure with its target (no timing assertions)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "kernel.py"


def run_bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(BENCH), *args], capture_output=True, text=True, timeout=300, check=False)


def test_quick_run_on_local_prints_one_json_object_with_targets():
    done = run_bench("--quick", "--backends", "local")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)  # stdout is the JSON object and nothing else

    local = report["backends"]["local"]
    for key in ("cold_start_to_first_result", "warm_handout_to_first_result", "roundtrip_1p1"):
        assert local[key]["median_ms"] > 0
    handout = local["warm_handout_to_first_result"]
    assert handout["target"] == 10.0 and isinstance(handout["meets_target"], bool)
    overhead = local["overhead_vs_raw_jupyter_client"]
    assert overhead["target"] == 1.15 and isinstance(overhead["meets_target"], bool) and overhead["value"] > 0
    assert overhead["raw"]["median_ms"] > 0
    assert local["ratio_vs_raw_stock_tcp"] > 0 and local["ratio_vs_raw_stock_ipc"] > 0
    assert local["plot_png_cell"]["first_cell_ms"] > 0
    assert set(report["raw_jupyter_client_stock_kernel_1p1"]) == {"tcp", "ipc"}
    assert "vs_local" not in local
    fork = local["fork_server"]  # issue 16: forked kernels against cold launches of the same run
    first = fork["fresh_kernel_to_first_result"]
    assert first["median_ms"] > 0 and first["target"] == 50.0 and first["speedup_vs_cold"]["speedup"] > 0
    assert fork["first_plot_cell_in_fresh_kernel"]["cold"]["median_ms"] > 0
    assert fork["sequential_kernels"]["kernels_run"] > 0 and fork["concurrent_kernels"]["wall_s"] > 0
    assert fork["pss"]["forked_pss_mib"] > 0 and fork["pss"]["cold_pss_mib"] > 0

    cli = report["cli"]
    assert cli["ratio"] > 0 and cli["python_pass"]["median_ms"] > 0
    assert cli["heavy_modules_imported"] == []  # `dsagent --help` must not import jupyter, panel, langgraph, ...
    assert isinstance(report["all_targets_met"], bool)
    assert "local: cold start" in done.stderr  # progress goes to stderr


def test_unknown_backend_is_a_clear_error():
    done = run_bench("--quick", "--backends", "nosuch")
    assert done.returncode == 2
    assert "no kernel backend named 'nosuch'" in done.stderr and "known:" in done.stderr
    assert done.stdout == ""
