"""The store on a real DuckDB file: writes, reads, pagination, dedupe, schema, bad files, gc."""

from __future__ import annotations

import os
from datetime import timedelta

import duckdb
import pytest

from dsagent.artifacts import schema
from dsagent.artifacts.models import NewArtifact
from dsagent.artifacts.store import Store
from dsagent.errors import DsagentError, NotFound, SchemaTooNew, StoreCorrupt


def png(n: int, size: int = 2000) -> bytes:
    return b"\x89PNG" + n.to_bytes(4, "big") + os.urandom(size - 8)


def test_run_lifecycle_events_and_artifacts(store):
    run = store.create_run("exec", title="t", params={"a": 1}, backend="local")
    assert (run.status, run.params, run.owner_pid) == ("running", {"a": 1}, os.getpid())
    with store.transaction() as tx:
        added = tx.add_artifacts(run.id, [NewArtifact("p.png", "image", "image/png", png(1), cell=0, tags=("plot",), metadata={"w": 3})])
        seqs = tx.append_events(run.id, [("cell_finished", {"cell": 0}), ("note", {"x": "y"})])
    assert seqs == [2, 3]
    done = store.update_run_status(run.id, "failed", error="boom")
    assert done.status == "failed" and done.error == "boom" and done.finished is not None
    assert [e.type for e in store.events(run.id)] == ["status", "cell_finished", "note", "status"]
    assert [e.seq for e in store.events(run.id, after=2)] == [3, 4]
    art = store.get_artifact(added[0].id)
    assert (art.name, art.kind, art.cell, art.tags, art.metadata) == ("p.png", "image", 0, ("plot",), {"w": 3})


def test_bytes_are_exact_and_stored_once(settings):
    settings = settings.replace(store_inline_max_bytes=10_000)
    with Store.open(settings=settings) as store:
        small, big = png(1), os.urandom(50_000)
        runs = [store.create_run("exec") for _ in range(2)]
        ids = [a.id for r in runs for a in store.add_artifacts(r.id, [NewArtifact("s.png", "image", "image/png", small),
                                                                          NewArtifact("b.bin", "file", "application/octet-stream", big)])]
        assert store.counts()["blobs"] == 2  # two runs, same bytes: stored once
        assert [store.read_bytes(i) for i in ids] == [small, big, small, big]
        assert len(list(store.blobs.all_hashes())) == 1  # only the big one lives in a file


def test_keyset_pagination_and_filters(store):
    runs = [store.create_run("exec"), store.create_run("notebook")]
    for r in runs:
        store.add_artifacts(r.id, [NewArtifact(f"f{i}.{'png' if i % 2 else 'csv'}", "image" if i % 2 else "file", "x/y", png(i)) for i in range(25)])
    seen, cursor = [], None
    while True:
        page = store.list_artifacts(limit=7, cursor=cursor)
        seen += [a.id for a in page.items]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == sorted(seen, reverse=True) and len(seen) == len(set(seen)) == 50
    assert {a.run_id for a in store.list_artifacts(run_id=runs[1].id, limit=100).items} == {runs[1].id}
    assert len(store.list_artifacts(kind="image", limit=100).items) == 24
    assert all(a.name.endswith(".png") for a in store.list_artifacts(name="*.png", limit=100).items)
    assert [r.kind for r in store.list_runs(kind="notebook").items] == ["notebook"]
    with pytest.raises(DsagentError, match="invalid cursor"):
        store.list_artifacts(cursor="abc")


def test_unknown_ids_and_values_are_clear(store):
    with pytest.raises(NotFound, match="no run with id 99"):
        store.get_run(99)
    with pytest.raises(NotFound, match="no artifact with id 5"):
        store.read_bytes(5)
    with pytest.raises(NotFound):
        store.append_events(42, [("x", {})])
    with pytest.raises(DsagentError, match="unknown run kind 'nope'"):
        store.create_run("nope")


def test_setup_is_idempotent_and_upgrades_an_empty_database(settings, workspace_home):
    workspace_home.mkdir(parents=True)
    duckdb.connect(str(workspace_home / "dsagent.duckdb")).close()  # a valid but empty DuckDB file: version 0
    with Store.open(settings=settings) as store:
        store.setup()
        store.setup()
        assert store.counts()["runs"] == 0
    con = duckdb.connect(str(workspace_home / "dsagent.duckdb"))
    assert con.execute("SELECT version FROM schema_version").fetchall() == [(schema.SCHEMA_VERSION,)]
    con.execute("UPDATE schema_version SET version = 99")
    con.close()
    with pytest.raises(SchemaTooNew, match="schema version 99") as info:
        Store.open(settings=settings).__enter__()
    assert "upgrade dsagent" in info.value.hint


@pytest.mark.parametrize("content", [b"", b"not a database at all" * 100, b"\x00" * 8 + b"DUCK" + os.urandom(5000)])
def test_a_foreign_or_corrupt_file_is_refused_and_left_untouched(settings, workspace_home, content):
    workspace_home.mkdir(parents=True)
    path = workspace_home / "dsagent.duckdb"
    path.write_bytes(content)
    with pytest.raises(StoreCorrupt, match="cannot be used as the workspace database") as info:
        with Store.open(settings=settings):
            pass
    assert "move the file away" in info.value.hint
    assert path.read_bytes() == content


def test_gc_deletes_old_runs_keeps_shared_bytes_and_shrinks_the_file(settings):
    settings = settings.replace(store_inline_max_bytes=40_000)
    with Store.open(settings=settings) as store:
        shared = png(7)
        old = store.create_run("exec")
        store.add_artifacts(old.id, [NewArtifact(f"o{i}", "image", "image/png", png(i, 30_000)) for i in range(150)])
        store.add_artifacts(old.id, [NewArtifact("shared", "image", "image/png", shared), NewArtifact("big", "file", "x/y", os.urandom(60_000))])
        store.update_run_status(old.id, "succeeded")
        live = store.create_run("exec")  # still running: never collected
        kept = store.add_artifacts(live.id, [NewArtifact("shared", "image", "image/png", shared)])
        preview = store.gc(timedelta(0), dry_run=True)
        assert (preview.runs, preview.artifacts, preview.blobs) == (1, 152, 151)
        assert store.counts()["artifacts"] == 153
        report = store.gc(timedelta(0))
        assert (report.runs, report.artifacts, report.blobs, report.files_removed) == (1, 152, 151, 1)
        assert report.db_bytes_after < report.db_bytes_before / 2, report
        assert os.path.getsize(store.path) + os.path.getsize(store.inline.path) == report.db_bytes_after
        assert store.read_bytes(kept[0].id) == shared
        assert store.counts() == {"runs": 1, "run_events": 1, "artifacts": 1, "blobs": 1}
        assert list(store.blobs.all_hashes()) == []
        assert store.create_run("exec").id == live.id + 1  # ids are never reused after gc
        assert store.gc(timedelta(days=30)).runs == 0


def test_runs_of_recent_age_survive_gc(store):
    run = store.create_run("exec")
    store.update_run_status(run.id, "succeeded")
    assert store.gc(timedelta(hours=1)).runs == 0
    assert store.get_run(run.id).status == "succeeded"
