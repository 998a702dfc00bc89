"""Real Jupyter servers on loopback for the ``jupyter`` backend's tests.

Test modules import the fixtures (``from remote_servers import jupyter_server,
kernel_gateway``; pytest puts this folder on sys.path). A fixture imported into
two modules is two fixtures, so the servers are shared through a reference
count: one Kernel Gateway and one Jupyter Server per test session.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from dsagent.kernel_gateway.fork_provisioner import PROVISIONER_NAME

JUPYTER = str(Path(sys.executable).with_name("jupyter"))


@dataclass(frozen=True)
class RunningServer:
    kind: str  # "kernelgateway" or "server"
    url: str
    token: str
    root: Path  # where the server starts kernels
    log: Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# the server's kernel restarter looks for dead kernels every `time_to_dead` seconds (3 by default): a
# kernel that dies is reported to clients that much later. The suite kills kernels on purpose in a dozen
# tests, so its servers look every half second; what a client sees is the same, only sooner.
RESTARTER_POLL = "--KernelRestarter.time_to_dead=0.5"
#: the servers' kernels on ipc sockets (each named after its connection file), as the local backend's: on TCP,
#: jupyter_client picks a kernel's ports by binding and closing them and the kernel binds them later, and on a busy
#: machine (parallel test workers) another process may take one in between: the kernel dies at start
KERNEL_TRANSPORT = "--KernelManager.transport=ipc"


def _command(kind: str, port: int, token: str, root: Path) -> list[str]:
    if kind == "kernelgateway":
        return [
            JUPYTER, "kernelgateway", RESTARTER_POLL,
            "--KernelGatewayApp.ip=127.0.0.1", f"--KernelGatewayApp.port={port}",
            f"--KernelGatewayApp.auth_token={token}", "--KernelGatewayApp.port_retries=0",
            "--JupyterWebsocketPersonality.list_kernels=True",  # GET /api/kernels, for the leak check after each test
            KERNEL_TRANSPORT,
        ]
    command = [
        JUPYTER, "server", "--no-browser", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
        f"--ServerApp.token={token}", f"--ServerApp.root_dir={root}", "--ServerApp.port_retries=0",
        "--ServerApp.open_browser=False", RESTARTER_POLL, KERNEL_TRANSPORT,
    ]
    if os.geteuid() == 0:
        command.append("--allow-root")
    return command


def _wait_ready(url: str, token: str, process: subprocess.Popen[bytes], log: Path, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/api/kernelspecs", headers={"Authorization": f"token {token}"}, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the server did not answer on {url} within {timeout}s:\n{log.read_text()[-3000:]}")


#: the kernelspec of a stock kernel launch (a cold interpreter), next to the servers' default forked one
STOCK_KERNEL = "python3-stock"


def install_kernelspecs(folder: Path, kind: str) -> Path:
    """``python3`` forked by dsagent's provisioner (the servers' default) and ``python3-stock``; returns the JUPYTER_PATH entry.

    The backend under test sees the same server API either way; forked kernels
    spare each session a cold interpreter (~1 s of CPU), which is most of what
    these tests would otherwise spend.
    """
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    # history in memory (as papermill's and the local backend's kernels) lets the template build the
    # shell once; the Jupyter Server keeps the stock file history, so its forks initialize fully
    fork_argv = [*argv, "--HistoryManager.hist_file=:memory:"] if kind == "kernelgateway" else argv
    specs = {
        "python3": {"argv": fork_argv, "display_name": "Python 3 (forked)", "language": "python",
                    "metadata": {"kernel_provisioner": {"provisioner_name": PROVISIONER_NAME}}},
        STOCK_KERNEL: {"argv": argv, "display_name": "Python 3 (stock launch)", "language": "python"},
    }  # fmt: skip
    for name, spec in specs.items():
        spec_dir = folder / "kernels" / name
        spec_dir.mkdir(parents=True, exist_ok=True)
        (spec_dir / "kernel.json").write_text(json.dumps(spec))
    return folder


def start_server(kind: str, folder: Path) -> tuple[RunningServer, subprocess.Popen[bytes]]:
    """Start ``jupyter kernelgateway`` or ``jupyter server`` on a free loopback port; wait until it answers."""
    token = secrets.token_hex(16)
    root = folder / "root"
    root.mkdir(parents=True, exist_ok=True)
    jupyter_path = install_kernelspecs(folder / "share", kind)
    log = folder / f"{kind}.log"
    # PYTEST_CURRENT_TEST would reach the kernels, and ipykernel stops forwarding
    # fd-level output (os.write, C code) when it sees it: keep them as users run them
    env = {k: v for k, v in os.environ.items() if not k.startswith("JUPYTER_TOKEN") and k != "PYTEST_CURRENT_TEST"}
    env["JUPYTER_PATH"] = os.pathsep.join(filter(None, [str(jupyter_path), env.get("JUPYTER_PATH")]))
    for attempt in (1, 2, 3):
        # the port is free when picked, but any process's bind or outgoing connection may take it before the
        # server binds it (port_retries=0: the server then exits saying so): another port, then
        port = free_port()
        with open(log, "wb") as out:
            process = subprocess.Popen(_command(kind, port, token, root), cwd=root, stdout=out, stderr=subprocess.STDOUT, env=env)
        server = RunningServer(kind, f"http://127.0.0.1:{port}", token, root, log)
        try:
            _wait_ready(server.url, token, process, log)
        except RuntimeError:
            stop_server(process)
            if attempt < 3 and process.returncode is not None and "already in use" in log.read_text():
                continue
            raise
        except BaseException:
            stop_server(process)
            raise
        return server, process
    raise AssertionError("unreachable")


def stop_server(process: subprocess.Popen[bytes]) -> None:
    process.terminate()  # the server shuts its kernels down on SIGTERM
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def leaked_kernels(server: RunningServer, wait: float = 5.0) -> list[str]:
    """Ids of kernels the server still has (waiting ``wait`` s for deletions in flight); they are deleted."""
    headers = {"Authorization": f"token {server.token}"}
    end = time.monotonic() + wait
    while True:
        answer = httpx.get(f"{server.url}/api/kernels", headers=headers, timeout=10)
        answer.raise_for_status()
        ids = [k["id"] for k in answer.json()]
        if not ids or time.monotonic() >= end:
            break
        time.sleep(0.1)
    for kernel_id in ids:  # so the next test starts clean
        httpx.delete(f"{server.url}/api/kernels/{kernel_id}", headers=headers, timeout=30)
    return ids


@contextmanager
def no_kernel_leaks(server: RunningServer) -> Iterator[RunningServer]:
    """Fail the test (at teardown) if it leaves kernels on the shared server; servers outlive tests, leaks would pile up."""
    yield server
    leaked = leaked_kernels(server)
    if leaked:
        pytest.fail(
            f"the test left {len(leaked)} kernel(s) on the shared {server.kind} ({', '.join(leaked)}): "
            "shut sessions down (`async with`, shutdown()) or aclose() the backend",
            pytrace=False,
        )


_RUNNING: dict[str, tuple[RunningServer, subprocess.Popen[bytes], int]] = {}


def _acquire(kind: str, factory: pytest.TempPathFactory) -> RunningServer:
    if kind not in _RUNNING:
        server, process = start_server(kind, factory.mktemp(kind))
        _RUNNING[kind] = (server, process, 0)
    server, process, count = _RUNNING[kind]
    _RUNNING[kind] = (server, process, count + 1)
    return server


def _release(kind: str) -> None:
    server, process, count = _RUNNING[kind]
    if count > 1:
        _RUNNING[kind] = (server, process, count - 1)
        return
    del _RUNNING[kind]
    stop_server(process)


@pytest.fixture(scope="session")
def kernel_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A real Kernel Gateway (no contents API) with a token, for the whole test session."""
    yield _acquire("kernelgateway", tmp_path_factory)
    _release("kernelgateway")


@pytest.fixture(scope="session")
def jupyter_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A real Jupyter Server (with a contents API) with a token, for the whole test session."""
    yield _acquire("server", tmp_path_factory)
    _release("server")
