"""The ``local`` backend beyond the conformance kit: the warm pool, start failures, clean exits."""

from __future__ import annotations

import ast
import asyncio
import json
import os
import sys
import time
import uuid

import psutil
import pytest

from dsagent.errors import KernelStartFailed
from dsagent.kernel_gateway import forkserver
from dsagent.kernel_gateway.local import LocalBackend
from dsagent.settings import Settings


#: kernels this worker process already had when the test began (say, those of the in-process
#: E2B loopback server another module of the same xdist worker started): not the test's
_PRESENT_BEFORE: set[int] = set()


@pytest.fixture(autouse=True)
def _only_this_tests_kernels():
    _PRESENT_BEFORE.clear()
    _PRESENT_BEFORE.update(_ipykernels())
    yield
    _PRESENT_BEFORE.clear()


def kernel_processes() -> set[int]:
    """Pids of ipykernels this test started (any depth), forked ones included."""
    return _ipykernels() - _PRESENT_BEFORE


def _ipykernels() -> set[int]:
    """Pids of ipykernels started by this test process (any depth), forked ones included.

    A forked kernel is a child of its fork template, which is shared and not
    ours; the pool tests below use a template of their own (``private``), so
    the kernels under the templates this process used are its own. A shared
    template this process happened to start is its child too, but the kernels
    under it are every process's (other test workers', Dask workers', CLI
    runs') coming and going at any time: not counted.
    """
    found = set()
    roots = [psutil.Process()]
    for server in forkserver._SERVERS.values():
        pid = server.template_pid()
        if pid is not None and server.preload and server.preload[-1].startswith(PRIVATE_PRELOAD):
            roots.append(psutil.Process(pid))
    for child in (c for root in roots for c in root.children(recursive=True)):
        try:
            if child.status() != psutil.STATUS_ZOMBIE and "ipykernel_launcher" in " ".join(child.cmdline()):
                if not _forked_by_a_shared_template(child):
                    found.add(child.pid)
        except psutil.NoSuchProcess:
            pass
    return found


def _forked_by_a_shared_template(kernel: psutil.Process) -> bool:
    parent = kernel.parent()
    command = " ".join(parent.cmdline()) if parent is not None else ""
    return str(forkserver.TEMPLATE_SCRIPT) in command and PRIVATE_PRELOAD not in command


PRIVATE_PRELOAD = "dsagent_test_private_template_"


def private() -> Settings:
    """Settings whose fork template no other test (or test worker) shares: a preload entry of its own."""
    return Settings(kernel_pool_replenish_delay=0, kernel_preload=f"{PRIVATE_PRELOAD}{uuid.uuid4().hex[:8]}")


async def test_pool_hands_out_each_kernel_once_and_refills():
    async with LocalBackend(private(), pool_size=2) as backend:
        await backend.warm()
        pooled = kernel_processes()
        assert len(pooled) == 2
        seen = []
        for _ in range(3):
            async with await backend.start_session() as session:
                assert session.kernel_pid not in seen
                seen.append(session.kernel_pid)
                await session.execute("used = True")
        assert set(seen[:2]) == pooled  # the first two came warm from the pool
        # the pool refills in the background with fresh kernels, never the used ones
        end = time.monotonic() + 30
        while backend.pool.ready < 2 and time.monotonic() < end:
            await asyncio.sleep(0.1)
        assert backend.pool.ready == 2
        # a used forked kernel finishes exiting in the background (shutdown() does not wait for it)
        exiting = []
        for pid in seen:
            try:
                exiting.append(psutil.Process(pid))
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(exiting, timeout=10)
        assert not kernel_processes() & set(seen)


async def test_aclose_stops_every_kernel_pooled_or_in_use():
    backend = LocalBackend(private(), pool_size=2)
    await backend.warm()
    session = await backend.start_session()
    await session.execute("x = 1")
    assert session.kernel_pid in kernel_processes()
    assert len(kernel_processes()) >= 2
    await backend.aclose()
    end = time.monotonic() + 10
    while kernel_processes() and time.monotonic() < end:
        await asyncio.sleep(0.1)
    assert kernel_processes() == set()


async def test_missing_kernelspec_is_named_with_what_to_do():
    async with LocalBackend(pool_size=0, kernel_name="no-such-kernel") as backend:
        with pytest.raises(KernelStartFailed) as caught:
            await backend.start_session()
    assert "'no-such-kernel'" in str(caught.value)
    assert "jupyter kernelspec list" in caught.value.hint
    assert caught.value.kernel_name == "no-such-kernel"


async def test_kernel_that_exits_at_start_fails_fast_with_its_log(tmp_path, monkeypatch):
    spec = tmp_path / "jupyter" / "kernels" / "broken"
    spec.mkdir(parents=True)
    crash = "import sys; print('boom: this kernel cannot start', file=sys.stderr); sys.exit(3)"
    (spec / "kernel.json").write_text(json.dumps({"argv": [sys.executable, "-c", crash, "{connection_file}"], "display_name": "broken", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    start = time.monotonic()
    async with LocalBackend(pool_size=0, kernel_name="broken") as backend:
        with pytest.raises(KernelStartFailed) as caught:
            await backend.start_session()
    assert time.monotonic() - start < 20  # not the 60 s start timeout
    assert "'broken' failed to start" in str(caught.value)
    assert "boom: this kernel cannot start" in str(caught.value)  # the tail of the kernel's log
    assert not kernel_processes()


async def test_work_dir_that_cannot_be_created_is_a_clear_error(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    async with LocalBackend(pool_size=0) as backend:
        with pytest.raises(KernelStartFailed, match="cannot create the work dir"):
            await backend.start_session(work_dir=blocker / "work")


async def test_restart_ends_a_stuck_cell_instead_of_waiting_behind_it():
    # a cell that swallows interrupts and has a long timeout holds the session; restart is the way out
    stubborn = "import time\nprint('started', flush=True)\nwhile True:\n    try:\n        time.sleep(60)\n    except KeyboardInterrupt:\n        pass"
    async with LocalBackend(pool_size=0) as backend, await backend.start_session() as session:
        await session.execute("lost = 1")
        started = asyncio.Event()
        task = asyncio.ensure_future(session.execute(stubborn, timeout=300, on_output=lambda out: started.set()))
        await asyncio.wait_for(started.wait(), 30)
        old_pid = session.kernel_pid
        await asyncio.wait_for(session.restart(), 30)  # before the shared loop: waited the cell's 300 s
        result = await asyncio.wait_for(task, 5)
        assert result.status == "died" and "restart() was called" in result.error.evalue
        assert result.stream_text() == "started\n"
        assert session.kernel_pid != old_pid
        assert (await session.execute("'lost' in globals()")).result == "False"
        # its sockets are unix sockets in the owner-only folder (no TCP port another process could take
        # between jupyter_client picking it and the kernel binding it), bound again by the restarted kernel
        info = await session.execute("import json, ipykernel\ninfo = json.loads(ipykernel.get_connection_info())\ninfo['transport'], info['ip']")
        transport, ip = ast.literal_eval(info.result)
        assert transport == "ipc" and os.path.dirname(ip) == forkserver.runtime_dir()
