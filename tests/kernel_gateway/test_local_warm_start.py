"""A pooled kernel is warmed up before its handout, yet its session starts as clean as a stock kernel."""

from __future__ import annotations

import json
import subprocess

import pytest
from jupyter_client import AsyncKernelManager
from jupyter_client.kernelspec import KernelSpecManager

from dsagent.kernel_gateway.kernel_death import STREAM_COPY_SCRIPT
from dsagent.kernel_gateway.local import IPYKERNEL_ARGUMENTS, LocalBackend, _launch_arguments
from dsagent.kernel_gateway.local_sockets import ipc_sockets

#: what a session can see of its kernel's past: names, In/Out, the execution count
STATE_PROBE = "sorted(k for k in globals() if not k.startswith('__')), list(In), dict(Out), get_ipython().execution_count"


async def stock_kernel_state() -> str:
    """The probe's result on a kernel started by plain jupyter_client, after the same first cell."""
    km = AsyncKernelManager(kernel_name="python3", **ipc_sockets())  # no TCP port race (see local_sockets.ipc_sockets); state is the same
    await km.start_kernel(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kc = km.client()
    kc.start_channels()
    try:
        await kc.wait_for_ready(timeout=60)
        await kc.execute_interactive("1+1", timeout=30, output_hook=lambda msg: None)
        texts: list[str] = []
        reply = await kc.execute_interactive(
            STATE_PROBE, timeout=30, output_hook=lambda m: texts.extend([m["content"]["data"]["text/plain"]] if m["msg_type"] == "execute_result" else [])
        )
        assert reply["content"]["status"] == "ok"
        return texts[0]
    finally:
        kc.stop_channels()
        await km.shutdown_kernel(now=True)


async def test_pooled_session_starts_as_clean_as_a_stock_kernel():
    async with LocalBackend(pool_size=1) as backend:
        await backend.warm()
        async with await backend.start_session() as session:
            first = await session.execute("1+1")
            assert (first.status, first.result, first.execution_count) == ("ok", "2", 1)
            probe = await session.execute(STATE_PROBE)
            assert probe.ok, probe.error
    assert probe.result == await stock_kernel_state()


async def test_history_still_works_within_a_session():
    async with LocalBackend(pool_size=0) as backend, await backend.start_session() as session:
        await session.execute("a = 41")
        history = await session.execute("%history")
        assert history.stream_text() == "a = 41\n%history\n"


def test_kernels_other_than_ipykernel_get_no_ipykernel_options(tmp_path, monkeypatch):
    spec_dir = tmp_path / "kernels" / "other"
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(json.dumps({"argv": ["other-kernel", "{connection_file}"], "display_name": "Other", "language": "r"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path))
    other = AsyncKernelManager(kernel_name="other", kernel_spec_manager=KernelSpecManager())
    assert _launch_arguments(other) == []
    assert _launch_arguments(AsyncKernelManager(kernel_name="python3")) == list(IPYKERNEL_ARGUMENTS)


@pytest.mark.parametrize("option", IPYKERNEL_ARGUMENTS)
async def test_ipykernel_accepts_each_launch_option(option):
    """A misspelt option would only be a warning in the kernel log: check that each took effect."""
    checks = {
        "--HistoryManager.hist_file=:memory:": "str(get_ipython().history_manager.hist_file) == ':memory:'",
        "--IPythonKernel._execute_sleep=0": "get_ipython().kernel._execute_sleep",
        # the stream copy's wrapper is in place (and left no name in the user's namespace)
        f"--IPKernelApp.exec_files={STREAM_COPY_SCRIPT}": "__import__('ipykernel.iostream').iostream.OutStream.write.dsagent_stream_copy "
        "and '_dsagent_stream_copy' not in globals() and 'os' not in globals()",
    }
    async with LocalBackend(pool_size=0) as backend, await backend.start_session() as session:
        value = await session.execute(checks[option])
    assert value.result in {"True", "0.0"}
