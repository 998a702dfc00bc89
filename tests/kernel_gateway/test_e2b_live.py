"""The e2b backend against real E2B sandboxes: runs only when E2B_API_KEY is set (costs sandbox time)."""

from __future__ import annotations

import os

import pytest

from dsagent.kernel_gateway.e2b import E2BBackend

pytestmark = [
    pytest.mark.skipif(not os.environ.get("E2B_API_KEY"), reason="E2B_API_KEY is not set: live E2B tests need a real key"),
    pytest.mark.skipif(os.environ.get("E2B_DEBUG", "").lower() == "true", reason="E2B_DEBUG=true points the SDK at localhost"),
    pytest.mark.timeout(300),
]


@pytest.fixture
async def session():
    async with E2BBackend(timeout=300) as backend:
        session = await backend.start_session(env={"DSAGENT_LIVE": "1", "DSAGENT_AWKWARD": "it's \"C:\\new\"\nline"})
        try:
            yield session
        finally:
            await session.shutdown()


async def test_code_files_commands(session):
    result = await session.execute("import os\nprint('hi')\nos.environ['DSAGENT_LIVE'], 'quoted'")
    assert result.status == "ok", result.error
    assert result.stream_text() == "hi\n" and result.result == "('1', 'quoted')"
    assert (await session.execute("'exact'")).result == "'exact'"
    await session.upload("in.txt", b"live")
    assert await session.download("in.txt") == b"live"
    assert [f.path for f in await session.list_files()] == ["in.txt"]
    done = await session.run_command("cat in.txt && echo $DSAGENT_LIVE")
    assert done.ok and done.stdout == "live1\n"


async def test_png_plot_and_error(session):
    plot = await session.execute("import matplotlib.pyplot as plt\nplt.plot([1, 2, 3])\nplt.show()")
    assert any("image/png" in o.get("data", {}) for o in plot.outputs), plot.outputs
    failed = await session.execute("1/0")
    assert failed.status == "error" and failed.error.ename == "ZeroDivisionError"


async def test_timeout_and_reconnect(session):
    await session.execute("kept = 41")
    assert (await session.execute("import time; time.sleep(60)", timeout=2)).status == "timeout"
    assert (await session.execute("kept")).result == "41"
    async with E2BBackend() as backend:
        again = await backend.start_session(sandbox_id=session.sandbox_id, context_id=session.context_id)
        assert again.state_restored and (await again.execute("kept + 1")).result == "42"
        await again.detach()


async def test_restart_keeps_work_dir_and_env_values_unchanged(session):
    await session.upload("in.txt", b"live")
    check = "import os\nos.getcwd(), open('in.txt').read(), os.environ['DSAGENT_AWKWARD']"
    expected = repr((session.work_dir, "live", 'it\'s "C:\\new"\nline'))
    assert (await session.execute(check)).result == expected
    await session.restart()
    assert (await session.execute(check)).result == expected
    assert (await session.execute("import time\nwhile True:\n    try: time.sleep(60)\n    except KeyboardInterrupt: pass", timeout=2)).status == "timeout"
    assert (await session.execute(check)).result == expected
