"""``dsagent exec`` as users run it: a real process, a real kernel, exit codes that say what happened."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

DSAGENT = str(Path(sys.executable).with_name("dsagent"))


def dsagent(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([DSAGENT, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_help_lists_the_commands(tmp_path):
    done = dsagent("--help", cwd=tmp_path)
    assert done.returncode == 0
    for command in ("exec", "backends", "runs", "artifacts"):
        assert command in done.stdout


def test_ok_prints_outputs_and_saves_images(tmp_path):
    code = (
        "import matplotlib\nmatplotlib.use('module://matplotlib_inline.backend_inline')\n"
        "import matplotlib.pyplot as plt\nplt.plot([1, 2]); plt.show()\nprint('printed')\n6 * 7"
    )
    done = dsagent("exec", "--output-dir", str(tmp_path / "out"), "--no-record", code, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "printed" in done.stdout and "42" in done.stdout
    saved = tmp_path / "out" / "output-1.png"
    assert f"[image/png saved to {saved}]" in done.stdout
    assert saved.read_bytes().startswith(b"\x89PNG")


def test_code_from_a_file(tmp_path):
    (tmp_path / "job.py").write_text("print('from a file')\n")
    done = dsagent("exec", "--no-record", "-f", str(tmp_path / "job.py"), cwd=tmp_path)
    assert done.returncode == 0 and done.stdout == "from a file\n"


@pytest.mark.parametrize(
    ("code", "extra", "exit_code", "message"),
    [
        ("1 / 0", [], 1, "error: the code raised ZeroDivisionError"),
        ("import time\ntime.sleep(30)", ["--timeout", "1"], 3, "error: timeout"),
        ("import os\nprint('partial', flush=True)\nos._exit(1)", [], 4, "error: kernel died: the kernel process exited with code 1"),
        # issue 28's command: "before" was lost 5 times in 15; the reason names the signal and quotes it
        ("import os, signal; print('before', flush=True); os.kill(os.getpid(), signal.SIGKILL)", [], 4,
         "error: kernel died: the kernel was killed by SIGKILL"),
    ],
    ids=["raises", "timeout", "died", "sigkill"],
)
def test_failures_exit_non_zero_and_say_which(tmp_path, code, extra, exit_code, message):
    done = dsagent("exec", "--no-record", *extra, code, cwd=tmp_path)
    assert done.returncode == exit_code, (done.stdout, done.stderr)
    assert message in done.stderr
    if exit_code == 4:  # what the cell printed is on stdout and quoted in the reason
        printed = "before" if "SIGKILL" in message else "partial"
        assert printed in done.stdout and f"| {printed}" in done.stderr


def test_unknown_backend_lists_the_known_ones(tmp_path):
    done = dsagent("exec", "--no-record", "--backend", "nope", "1", cwd=tmp_path)
    assert done.returncode == 2
    assert "nope" in done.stderr and "local" in done.stderr
