"""A full disk fails the run with a clear error and leaves earlier data intact."""

from __future__ import annotations

import base64
import errno
import os
import shutil
import subprocess
import uuid

import pytest

from dsagent.artifacts import blobfiles
from dsagent.artifacts.models import NewArtifact
from dsagent.artifacts.recorder import RunRecorder
from dsagent.artifacts.store import Store
from dsagent.errors import StorageFull
from dsagent.kernel_gateway.models import Execution
from dsagent.settings import Settings


def big_image_execution(size: int) -> Execution:
    png = base64.b64encode(b"\x89PNG" + os.urandom(size)).decode()
    return Execution(code="plot()", outputs=[{"output_type": "display_data", "data": {"image/png": png}, "metadata": {}}])


async def test_enospc_at_the_blob_boundary_fails_the_run_and_keeps_earlier_data(settings, monkeypatch):
    settings = settings.replace(store_inline_max_bytes=50_000)
    with Store.open(settings=settings) as store:
        earlier = store.create_run("exec")
        kept = store.add_artifacts(earlier.id, [NewArtifact("big.bin", "file", "x/y", os.urandom(80_000)),
                                                NewArtifact("small.png", "image", "image/png", b"png")])

        def no_space(path, data):
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(blobfiles, "write_file_atomically", no_space)
        with pytest.raises(StorageFull, match="the disk is full") as info:
            async with RunRecorder(store, "exec") as rec:
                await rec.record_cell(0, big_image_execution(100_000))
        assert "free disk space" in info.value.hint
        run = store.get_run(rec.run_id)
        assert run.status == "failed" and "disk is full" in run.error
        assert store.list_artifacts(run_id=run.id).items == []  # the cell's transaction was rolled back
        assert [store.read_bytes(a.id)[:3] for a in kept][1] == b"png"
        assert len(store.read_bytes(kept[0].id)) == 80_000


def _mount_tmpfs(folder, size: str) -> str | None:
    """None if mounted, else why not (not root, no mount command, a container without CAP_SYS_ADMIN ...)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return "mounting a tmpfs needs root and the mount command"
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True, text=True)
    return None if done.returncode == 0 else f"cannot mount a tmpfs here: {done.stderr.strip()}"


def test_a_really_full_disk(tmp_path):
    folder = tmp_path / f"tiny-{uuid.uuid4().hex[:6]}"
    folder.mkdir()
    why_not = _mount_tmpfs(folder, "6m")
    if why_not:
        pytest.skip(why_not)
    try:
        settings = Settings(home=str(folder / "ws"), store_inline_max_bytes=400_000)
        with Store.open(settings=settings) as store:
            run = store.create_run("exec")
            first = store.add_artifacts(run.id, [NewArtifact("first.bin", "file", "x/y", os.urandom(200_000))])
            with pytest.raises(StorageFull):
                for i in range(40):  # inline and file blobs until the disk is full
                    size = 1_000_000 if i % 2 else 300_000
                    store.add_artifacts(run.id, [NewArtifact(f"n{i}.bin", "file", "x/y", os.urandom(size))])
            count = store.counts()["artifacts"]
        with Store.open(settings=settings) as store:  # reopens cleanly; committed data is all there
            assert store.counts()["artifacts"] == count
            assert len(store.read_bytes(first[0].id)) == 200_000
            for artifact in store.list_artifacts(run_id=run.id, limit=100).items:
                assert len(store.read_bytes(artifact.id)) == artifact.size
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)
