"""``1+1`` round trip through a real Kernel Gateway on loopback (issue 7, item 2: target <= 10 ms).

Prints ONE JSON object. Starts ``jupyter kernelgateway`` on a free loopback
port, then interleaves samples of:

- ``dsagent``: ``JupyterBackend`` session ``execute("1+1")`` (v1 websocket protocol, TCP_QUICKACK);
- ``plain_websocket``: the same request over a plain ``websockets`` client that
  does not ACK at once (what a typical client, or jupyter_server's own
  websocket, sees: the server's Nagle delay meets our delayed ACK);
- ``plain_websocket_quickack``: that client with dsagent's immediate ACK, i.e. dsagent minus its session logic;
- ``local_jupyter_client``: a local ipykernel through ``jupyter_client``, for scale.

    .venv/bin/python bench/remote_kernel.py               # 50 samples each after 10 warm-ups
    .venv/bin/python bench/remote_kernel.py --repeat 200
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import websockets
from jupyter_client import AsyncKernelManager

from dsagent.kernel_gateway.remote import JupyterBackend
from dsagent.kernel_gateway.remote_channels import V1_PROTOCOL, _QuickAckConnection, decode_v1, encode_v1

TARGET_MS = 10.0
Sample = Callable[[], Awaitable[float]]


def start_gateway(folder: Path) -> tuple[str, str, subprocess.Popen[bytes]]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    token = secrets.token_hex(16)
    jupyter = str(Path(sys.executable).with_name("jupyter"))
    args = [jupyter, "kernelgateway", "--KernelGatewayApp.ip=127.0.0.1", f"--KernelGatewayApp.port={port}", f"--KernelGatewayApp.auth_token={token}"]
    log = open(folder / "kernelgateway.log", "wb")
    process = subprocess.Popen(args, cwd=folder, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if httpx.get(f"{url}/api/kernelspecs", headers={"Authorization": f"token {token}"}, timeout=1).status_code == 200:
                return url, token, process
        except httpx.HTTPError:
            time.sleep(0.2)
    process.kill()
    raise SystemExit(f"the kernel gateway did not start; see {folder / 'kernelgateway.log'}")


async def plain_websocket(url: str, token: str, quickack: bool = False) -> tuple[Sample, Callable[[], Awaitable[None]]]:
    headers = {"Authorization": f"token {token}"}
    async with httpx.AsyncClient(headers=headers) as http:
        kernel_id = (await http.post(f"{url}/api/kernels", json={"name": "python3"})).json()["id"]
    ws = await websockets.connect(
        url.replace("http", "ws") + f"/api/kernels/{kernel_id}/channels?session_id={secrets.token_hex(8)}",
        additional_headers=headers, subprotocols=[V1_PROTOCOL], max_size=None, compression=None,  # type: ignore[list-item]
        **({"create_connection": _QuickAckConnection} if quickack else {}),
    )

    async def sample() -> float:
        msg_id = secrets.token_hex(16)
        header = {"msg_id": msg_id, "msg_type": "execute_request", "username": "", "session": "bench", "date": "", "version": "5.3"}
        content = {"code": "1+1", "silent": False, "store_history": True, "user_expressions": {}, "allow_stdin": False}
        start = time.perf_counter()
        await ws.send(encode_v1("shell", {"header": header, "parent_header": {}, "metadata": {}, "content": content}))
        idle = reply = False
        while not (idle and reply):
            msg = decode_v1(await ws.recv())  # type: ignore[arg-type]
            if msg["parent_header"].get("msg_id") == msg_id:
                idle = idle or (msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle")
                reply = reply or msg["msg_type"] == "execute_reply"
        return time.perf_counter() - start

    async def close() -> None:
        await ws.close()
        async with httpx.AsyncClient(headers=headers) as http:
            await http.delete(f"{url}/api/kernels/{kernel_id}")

    return sample, close


async def local_kernel() -> tuple[Sample, Callable[[], Awaitable[None]]]:
    km = AsyncKernelManager(kernel_name="python3")
    await km.start_kernel()
    kc = km.client()
    kc.start_channels()
    await kc.wait_for_ready(timeout=60)

    async def sample() -> float:
        start = time.perf_counter()
        msg_id = kc.execute("1+1")
        while True:
            msg = await kc.get_iopub_msg(timeout=10)
            if msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                break
        while (await kc.get_shell_msg(timeout=10))["parent_header"].get("msg_id") != msg_id:
            pass
        return time.perf_counter() - start

    async def close() -> None:
        kc.stop_channels()
        await km.shutdown_kernel(now=True)

    return sample, close


async def measure(url: str, token: str, repeat: int, warmup: int) -> dict[str, object]:
    backend = JupyterBackend(url=url, token=token)
    session = await backend.start_session()

    async def dsagent_sample() -> float:
        start = time.perf_counter()
        result = await session.execute("1+1")
        assert result.result == "2", result
        return time.perf_counter() - start

    plain, close_plain = await plain_websocket(url, token)
    quick, close_quick = await plain_websocket(url, token, quickack=True)
    local, close_local = await local_kernel()
    samplers: dict[str, Sample] = {
        "dsagent": dsagent_sample, "plain_websocket": plain, "plain_websocket_quickack": quick, "local_jupyter_client": local,
    }
    samples: dict[str, list[float]] = {name: [] for name in samplers}
    try:
        for i in range(warmup + repeat):
            for name, sample in samplers.items():  # interleaved: a noisy neighbour slows all alike
                elapsed = await sample()
                if i >= warmup:
                    samples[name].append(elapsed)
    finally:
        await session.shutdown()
        await backend.aclose()
        await close_plain()
        await close_quick()
        await close_local()
    medians = {name: round(1000 * statistics.median(values), 2) for name, values in samples.items()}
    return {
        "benchmark": "remote_kernel_1+1",
        "server": "jupyter kernelgateway on 127.0.0.1",
        "samples": repeat,
        "median_ms": medians,
        "min_ms": {name: round(1000 * min(values), 2) for name, values in samples.items()},
        "target_ms": TARGET_MS,
        "meets_target": medians["dsagent"] <= TARGET_MS,
        "cpus": os.cpu_count(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dsagent-bench-remote-") as tmp:
        url, token, process = start_gateway(Path(tmp))
        try:
            report = asyncio.run(measure(url, token, args.repeat, args.warmup))
        finally:
            process.terminate()
            process.wait(timeout=15)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
