"""Capture on a real kernel: rich outputs, displayed DataFrames as Parquet, the files the cells wrote."""

from __future__ import annotations

import asyncio
import copy
import io
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from dsagent.artifacts.capture import Capture
from dsagent.artifacts.recorder import RunRecorder
from dsagent.kernel_gateway.base import KernelSession
from dsagent.kernel_gateway.local import LocalBackend

RICH_CELL = '''
import matplotlib
matplotlib.use("module://matplotlib_inline.backend_inline")
import matplotlib.pyplot as plt
import pandas as pd
from IPython.display import HTML, JSON, SVG, display
frame = pd.DataFrame({"a": range(7), 2: [f"x{i}" for i in range(7)], "c": [i / 2 for i in range(7)]})
display(frame)
plt.plot([1, 3, 2]); plt.show()
display(SVG('<svg xmlns="http://www.w3.org/2000/svg" width="4" height="4"><rect width="4" height="4"/></svg>'))
display(HTML("<b>bold</b>"))
display(JSON({"k": [1, 2]}))
open("result.csv", "w").write("a,b\\n1,2\\n")
open("same.txt", "w").write("unchanged")
open("gone.txt", "w").write("soon deleted")
print("printed")
{"answer": 42}
'''

FILES_CELL = '''
import os, time
time.sleep(0.05)
open("result.csv", "a").write("3,4\\n")
os.utime("same.txt")  # touched, same bytes
os.remove("gone.txt")
os.makedirs("sub", exist_ok=True)
open("sub/big.bin", "wb").write(b"x" * 300_000)
'''


class RemoteLike(KernelSession):
    """Delegates to a real session and records which calls capture makes (a remote kernel offers only these)."""

    def __init__(self, inner: KernelSession) -> None:
        self.inner = inner
        self.calls: list[str] = []

    @property
    def work_dir(self) -> str:
        return "/nonexistent/remote/workdir"  # capture must not touch the local filesystem

    async def execute(self, code: str, **kwargs: Any):
        self.calls.append("execute")
        return await self.inner.execute(code, **kwargs)

    async def list_files(self, path: str = ".", *, recursive: bool = False):
        self.calls.append("list_files")
        return await self.inner.list_files(path, recursive=recursive)

    async def download(self, path: str) -> bytes:
        self.calls.append("download")
        return await self.inner.download(path)

    async def interrupt(self) -> None: ...
    async def restart(self) -> None: ...
    async def is_alive(self) -> bool: return True
    async def upload(self, path: str, data: bytes) -> None: ...
    async def shutdown(self) -> None: ...


@pytest.fixture
async def session(settings):
    async with LocalBackend(settings, pool_size=0) as backend:
        async with await backend.start_session() as real:
            yield real


async def test_a_recorded_session_captures_outputs_frames_and_files(store, session):
    settings = store.settings.replace(capture_max_file_bytes=200_000)
    store.settings = settings
    remote = RemoteLike(session)
    async with RunRecorder(store, "notebook", title="capture") as rec:
        await rec.attach(remote)
        first = await rec.execute(RICH_CELL)
        second = await rec.execute(FILES_CELL)
        third = await rec.execute("1 / 0")
    assert first.ok and second.ok and first.execution_count == 1 and second.execution_count == 2
    assert third.status == "error"
    assert set(remote.calls) == {"execute", "download"}  # the work dir is never listed, let alone walked

    run = store.get_run(rec.run_id)
    assert run.status == "failed" and "ZeroDivisionError" in run.error
    by_cell: dict[int, list] = {}
    for artifact in store.list_artifacts(run_id=run.id, limit=100).items:
        by_cell.setdefault(artifact.cell, []).append(artifact)

    kinds = sorted((a.kind, a.mime) for a in by_cell[0])
    assert kinds == sorted([
        ("table", "application/vnd.apache.parquet"), ("image", "image/png"), ("image", "image/svg+xml"),
        ("html", "text/html"), ("json", "application/json"), ("text", "text/plain"),
        ("file", "text/csv"), ("file", "text/plain"), ("file", "text/plain"),
    ]), kinds
    table = next(a for a in by_cell[0] if a.kind == "table")
    assert (table.metadata["rows"], table.metadata["columns"]) == (7, 3)
    frame = pd.read_parquet(io.BytesIO(store.read_bytes(table.id)))
    assert list(frame.columns) == ["a", "2", "c"] and frame["c"].tolist() == [i / 2 for i in range(7)]
    png = next(a for a in by_cell[0] if a.mime == "image/png")
    assert store.read_bytes(png.id).startswith(b"\x89PNG")
    assert store.read_bytes(next(a.id for a in by_cell[0] if a.name == "result.csv")) == b"a,b\n1,2\n"

    # the frame's own display is exactly what IPython makes: no capture mime type added
    frame_output = next(o for o in first.outputs if "text/html" in o.get("data", {}) and "dataframe" in o["data"]["text/html"])
    assert set(frame_output["data"]) == {"text/html", "text/plain"}

    files = [a for a in by_cell[1] if a.kind == "file"]
    assert [(a.name, a.metadata["change"]) for a in files] == [("result.csv", "modified")]
    assert store.read_bytes(files[0].id) == b"a,b\n1,2\n3,4\n"
    events = store.events(run.id)
    skipped = [e.payload for e in events if e.type == "file_skipped"]
    assert skipped and skipped[0]["path"] == "sub/big.bin" and skipped[0]["size"] == 300_000
    assert any(e.type == "files_deleted" and e.payload["paths"] == ["gone.txt"] for e in events)
    assert [e.payload["status"] for e in events if e.type == "cell_finished"] == ["ok", "ok", "error"]
    assert 2 not in by_cell  # an error is not an artifact; it is in the events


async def test_capture_leaves_the_execution_untouched(session, settings):
    capture = Capture(session, settings)
    assert await capture.install() == []
    await capture.before_cell()
    execution = await session.execute('import pandas as pd\ndisplay(pd.DataFrame({"x": [1, 2]}))\n"text"')
    before = copy.deepcopy(execution.outputs)
    captured = await capture.after_cell(execution, 0)
    assert execution.outputs == before
    assert [a.kind for a in captured.artifacts] == ["table", "text"]
    assert execution.execution_count == 1


async def test_a_workspace_inside_the_work_dir_is_not_captured(store):
    """A project folder holding its workspace under another name than .dsagent: the kernel's cwd is the
    project, and the store's own files (DuckDB file, WAL, blobs) change with every cell."""
    project = store.workspace.home.parent
    assert store.workspace.home.name != ".dsagent"
    async with LocalBackend(store.settings, pool_size=0) as backend:
        async with await backend.start_session(work_dir=project) as session:
            async with RunRecorder(store, "notebook", title="workspace inside") as rec:
                await rec.attach(session)
                await rec.execute(f"open('out.txt', 'w').write('mine'); open({str(store.workspace.home / 'note.txt')!r}, 'w').write('x')")
                await rec.execute("open('out.txt', 'a').write(' again')")
    files = [a.name for a in store.list_artifacts(run_id=rec.run_id, limit=100).items if a.kind == "file"]
    assert files == ["out.txt", "out.txt"], files


WRITER_CELL = """
import subprocess, time
open("mine.txt", "w").write("mine")
time.sleep(1.5)  # another process writes into the folder meanwhile
"""


async def test_only_files_the_run_wrote_are_captured_not_another_process(store, session):
    folder = Path(session.work_dir)
    (folder / "deep").mkdir()
    other = "import pathlib, sys; [pathlib.Path(sys.argv[1], name).write_text('not yours') for name in ('other.txt', 'deep/other.txt')]"
    async with RunRecorder(store, "notebook", title="other process") as rec:
        await rec.attach(session)

        async def meanwhile() -> None:
            await asyncio.sleep(0.5)
            await asyncio.to_thread(subprocess.run, [sys.executable, "-c", other, str(folder)], check=True)

        await asyncio.gather(rec.execute(WRITER_CELL), meanwhile())
        # a child process the cell starts is the run's: its top-level file is captured
        await rec.execute("import subprocess; subprocess.run(['sh', '-c', 'echo child > child.txt'], check=True)")
        await rec.execute("import numpy as np, os; np.save('sub.npy', np.arange(3)); os.replace('sub.npy', 'renamed.npy')")
    assert (folder / "other.txt").exists() and (folder / "deep" / "other.txt").exists()
    files = [(a.name, a.cell) for a in store.list_artifacts(run_id=rec.run_id, limit=100).items if a.kind == "file"]
    assert sorted(files) == [("child.txt", 1), ("mine.txt", 0), ("renamed.npy", 2)], files


async def test_the_per_run_file_limit_says_so(store, session):
    store.settings = store.settings.replace(capture_max_files=2)
    async with RunRecorder(store, "notebook", title="many files") as rec:
        await rec.attach(session)
        await rec.execute("for i in range(4): open(f'f{i}.txt', 'w').write(str(i))")
        await rec.execute("open('later.txt', 'w').write('x')")
    files = [a.name for a in store.list_artifacts(run_id=rec.run_id, limit=100).items if a.kind == "file"]
    assert sorted(files) == ["f0.txt", "f1.txt"], files
    limited = [e.payload for e in store.events(rec.run_id) if e.type == "capture_limited"]
    assert len(limited) == 1 and "capture_max_files (2)" in limited[0]["reason"] and "DSAGENT_CAPTURE_MAX_FILES" in limited[0]["reason"]


async def test_a_second_run_on_the_same_kernel_captures_its_own_files(store, session):
    """A chat's turns are runs on one kernel: the hooks installed by the first are pointed at the next run's folder."""
    runs = []
    for name in ("first.txt", "second.txt"):
        async with RunRecorder(store, "notebook", title=name) as rec:
            await rec.attach(session)
            await rec.execute(f"import pandas as pd; open({name!r}, 'w').write('x'); display(pd.DataFrame({{'a': [1]}}))")
        runs.append(rec.run_id)
    for run_id, name in zip(runs, ("first.txt", "second.txt")):
        kinds = sorted((a.kind, a.name) for a in store.list_artifacts(run_id=run_id, limit=100).items if a.kind in ("file", "table"))
        assert kinds == [("file", name), ("table", "cell-0-table-1.parquet")], kinds


SIBLING_TIDIES_UP = '''
import os, shutil, types
capture = get_ipython()._dsagent_capture
real_os = capture.os

def makedirs(path, exist_ok=False, _raced=[]):
    if not _raced:  # what a sweep sibling's end does between two of makedirs' steps: the empty parents go
        _raced.append(True)
        shutil.rmtree(os.path.dirname(os.path.dirname(path)), ignore_errors=True)
        raise FileNotFoundError(2, "No such file or directory", os.path.dirname(path))
    return real_os.makedirs(path, exist_ok=exist_ok)

capture.os = types.SimpleNamespace(**{name: getattr(real_os, name) for name in dir(real_os) if not name.startswith("__")})
capture.os.makedirs = makedirs
'''


async def test_a_sibling_run_tidying_the_shared_scratch_folder_away_fails_no_cell(store, session):
    """Sweep children share the notebook's folder; one that ends removes the empty .dsagent/frames (CI saw a
    child fail with FileNotFoundError on it). The kernel makes its folder again instead of failing the cell."""
    async with RunRecorder(store, "notebook", title="sibling race") as rec:
        await rec.attach(session)
        assert (await rec.execute(SIBLING_TIDIES_UP)).ok
        shown = await rec.execute("import pandas as pd; display(pd.DataFrame({'a': [1, 2]})); open('out.txt', 'w').write('x')")
        assert shown.ok, shown.error
    kinds = sorted((a.kind, a.name) for a in store.list_artifacts(run_id=rec.run_id, limit=100).items if a.kind in ("file", "table"))
    assert kinds == [("file", "out.txt"), ("table", "cell-1-table-1.parquet")], kinds
