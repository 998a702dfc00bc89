"""The CLI on a real workspace: exec records a run; listings, get, export, gc; bad input."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import zipfile

from dsagent.artifacts.models import NewArtifact
from dsagent.cli import main

STABLE = {"id", "run_id", "kind", "mime", "name", "size", "sha256", "created"}
EVIL_NAMES = ["../../evil.txt", "/etc/passwd", "a/../../b.png", "..", "sub\\..\\..\\win.txt", "ok.png"]


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_exec_records_a_run_that_the_listing_commands_show(workspace_home, capsys):
    code = 'import matplotlib\nmatplotlib.use("module://matplotlib_inline.backend_inline")\nimport matplotlib.pyplot as plt\nplt.plot([1, 2]); plt.show()\nopen("data.txt", "w").write("hello")'
    done = subprocess.run([sys.executable, "-m", "dsagent", "exec", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "DSAGENT_HOME": str(workspace_home)})
    assert done.returncode == 0, done.stderr
    assert "[run 1 recorded with 3 artifacts: dsagent runs show 1]" in done.stderr

    status, out, _ = run_cli(capsys, "runs", "ls", "--json")
    (run,) = [json.loads(line) for line in out.splitlines()]
    assert (run["id"], run["kind"], run["status"], run["backend"]) == (1, "exec", "succeeded", "local")

    status, out, _ = run_cli(capsys, "artifacts", "ls", "--run", "1", "--json")
    rows = [json.loads(line) for line in out.splitlines()]
    assert all(STABLE <= set(row) for row in rows)
    assert sorted(r["kind"] for r in rows) == ["file", "image", "text"]
    data_row = next(r for r in rows if r["name"] == "data.txt")
    target = workspace_home / "got.txt"
    assert run_cli(capsys, "artifacts", "get", str(data_row["id"]), "-o", str(target))[0] == 0
    assert target.read_bytes() == b"hello" and hashlib.sha256(b"hello").hexdigest() == data_row["sha256"]

    status, out, _ = run_cli(capsys, "runs", "events", "1")
    assert "cell_finished" in out and "status=succeeded" in out
    status, out, _ = run_cli(capsys, "runs", "events", "1", "--follow", "--json")  # the run is done: returns
    assert json.loads(out.splitlines()[-1])["payload"] == {"status": "succeeded"}


def test_listing_pages_with_a_cursor(store, capsys):
    run = store.create_run("exec")
    store.add_artifacts(run.id, [NewArtifact(f"f{i}.png", "image", "image/png", bytes([i])) for i in range(5)])
    status, out, _ = run_cli(capsys, "artifacts", "ls", "--limit", "2")
    assert out.splitlines()[-1] == "(more: --cursor 4)"
    status, out, _ = run_cli(capsys, "artifacts", "ls", "--limit", "2", "--cursor", "4", "--json")
    assert [json.loads(line)["id"] for line in out.splitlines()] == [3, 2]
    status, out, _ = run_cli(capsys, "artifacts", "ls", "--name", "f1*", "--since", "1h", "--json")
    assert [json.loads(line)["name"] for line in out.splitlines()] == ["f1.png"]


def test_export_keeps_every_file_inside_the_target(store, workspace_home, capsys):
    run = store.create_run("exec")
    added = store.add_artifacts(run.id, [NewArtifact(name, "file", "text/plain", name.encode()) for name in EVIL_NAMES])
    folder = workspace_home / "export" / "inner"
    assert run_cli(capsys, "artifacts", "export", str(run.id), "-o", str(folder))[0] == 0
    written = sorted(p.name for p in folder.iterdir())
    assert len(written) == len(EVIL_NAMES) + 1 and "manifest.json" in written
    assert sorted(p.name for p in (workspace_home / "export").iterdir()) == ["inner"]  # nothing escaped
    manifest = json.loads((folder / "manifest.json").read_text())
    for entry, artifact in zip(manifest["artifacts"], added):
        assert (folder / entry["file"]).read_bytes() == artifact.name.encode()
        assert "/" not in entry["file"] and "\\" not in entry["file"] and ".." not in entry["file"]
    archive = workspace_home / "run.zip"
    assert run_cli(capsys, "artifacts", "export", str(run.id), "-o", str(archive))[0] == 0
    with zipfile.ZipFile(archive) as opened:
        names = opened.namelist()
        assert all("/" not in n and "\\" not in n and ".." not in n for n in names)
        assert json.loads(opened.read("manifest.json"))["run"]["id"] == run.id


def test_unknown_ids_and_bad_arguments_say_what_to_do(store, capsys):
    status, _, err = run_cli(capsys, "artifacts", "show", "12345")
    assert status == 2 and "no artifact with id 12345" in err and "dsagent artifacts ls" in err
    status, _, err = run_cli(capsys, "runs", "events", "77")
    assert status == 2 and "no run with id 77" in err
    status, _, err = run_cli(capsys, "gc", "--older-than", "soon")
    assert status == 2 and "45s, 15m, 12h, 30d, 2w" in err


def test_gc_from_the_cli(store, capsys):
    run = store.create_run("exec")
    store.add_artifacts(run.id, [NewArtifact("x.bin", "file", "x/y", os.urandom(200_000))])
    store.update_run_status(run.id, "succeeded")
    status, out, _ = run_cli(capsys, "gc", "--older-than", "0s", "--dry-run", "--json")
    assert json.loads(out)["runs"] == 1 and store.counts()["runs"] == 1
    status, out, _ = run_cli(capsys, "gc", "--older-than", "0s")
    assert "deleted 1 runs" in out and store.counts()["runs"] == 0
