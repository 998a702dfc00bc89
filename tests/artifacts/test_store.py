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


# ids, not the bytes: xdist workers must collect the same test names, and random bytes differ per process
@pytest.mark.parametrize("content", [b"", b"not a database at all" * 100, b"\x00" * 8 + b"DUCK" + os.urandom(5000)],
                         ids=["empty", "text", "duckdb-magic-then-garbage"])
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
        assert os.path.getsize(store.path) + store.packs.total_bytes() == report.db_bytes_after
        assert not store.inline.path.exists()  # schema v4 writes bytes to packs, not a second DuckDB file
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


def test_a_torn_pack_tail_and_uncommitted_records_are_skipped_and_reclaimed(store):
    """A writer killed mid-append or before its commit leaves pack bytes nothing references."""
    run = store.create_run("exec")
    first = store.add_artifacts(run.id, [NewArtifact("a.png", "image", "image/png", png(1))])[0]
    with pytest.raises(RuntimeError):
        with store.transaction() as tx:  # its bytes are appended (and synced), then it rolls back
            tx.add_artifacts(run.id, [NewArtifact("lost.png", "image", "image/png", png(2))])
            raise RuntimeError("killed before the commit")
    (pack,) = store.packs.numbers()
    with open(store.packs.path(pack), "ab") as handle:
        handle.write(b"DSB1" + os.urandom(20))  # a torn record: the writer died inside pwrite
    second = store.add_artifacts(run.id, [NewArtifact("b.png", "image", "image/png", png(3))])[0]
    assert store.read_bytes(first.id)[4:8] == (1).to_bytes(4, "big")
    assert store.read_bytes(second.id)[4:8] == (3).to_bytes(4, "big")
    before = store.packs.total_bytes()
    report = store.gc(timedelta(days=1))
    assert report.orphans_removed >= 1  # the rolled-back record (the scan stops at the torn one)
    assert store.packs.total_bytes() < before
    assert [store.read_bytes(a.id)[4:8] for a in (first, second)] == [(1).to_bytes(4, "big"), (3).to_bytes(4, "big")]
    assert len(store.packs.numbers()) == 1  # the old pack is gone, the copy holds both records


def test_damaged_pack_bytes_are_reported_not_returned(store):
    run = store.create_run("exec")
    art = store.add_artifacts(run.id, [NewArtifact("a.png", "image", "image/png", png(1))])[0]
    path = store.packs.path(store.packs.numbers()[0])
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(StoreCorrupt, match="missing or damaged"):
        store.read_bytes(art.id)


def test_a_v1_workspace_keeps_its_inline_bytes_after_the_upgrade(settings, monkeypatch):
    """Bytes written before schema v4 live in the second DuckDB file; they stay readable and gc-able."""
    from dsagent.artifacts.blobfiles import sha256_hex
    from dsagent.artifacts.rows import naive_utc
    from dsagent.artifacts.models import utcnow

    data = png(9, 5000)
    sha = sha256_hex(data)
    with monkeypatch.context() as patch:
        patch.setattr(schema, "MIGRATIONS", schema.MIGRATIONS[:1])
        patch.setattr(schema, "SCHEMA_VERSION", 1)
        with Store.open(settings=settings) as old:
            run = old.create_run("exec")
            with old.transaction() as tx:
                shard = old.inline.write(tx.con, {sha: data})[sha]
                now = naive_utc(utcnow())
                tx.con.execute("INSERT INTO blobs VALUES (?, ?, ?, ?)", [sha, len(data), shard, now])
                tx.con.execute("UPDATE id_counters SET last_id = 1 WHERE name = 'artifacts'")
                tx.con.execute("INSERT INTO artifacts VALUES (1, ?, 0, 'old.png', 'image', 'image/png', ?, ?, ?, [], '{}')",
                               [run.id, len(data), sha, now])
            old.update_run_status(run.id, "succeeded")
    with Store.open(settings=settings) as store:  # upgrades to the newest version in place
        assert store.read_bytes(1) == data
        again = store.add_artifacts(store.create_run("exec").id, [NewArtifact("same.png", "image", "image/png", data)])[0]
        assert store.read_bytes(again.id) == data and store.counts()["blobs"] == 1  # known bytes get no second row
        # their bytes were appended before the lock (so before the store could say they are known):
        # an orphan record, which gc drops
        assert store.packs.numbers() == [1]
        report = store.gc(timedelta(0))
        assert report.runs == 1 and store.read_bytes(again.id) == data  # still shared by the live run
        assert store.packs.numbers() == []


def test_a_v4_workspace_gets_idle_chats(settings, monkeypatch):
    """Before v5 a chat's run was ``running`` while open and ``queued`` while closed: both become ``idle``,
    and only the open one keeps its holder."""
    with monkeypatch.context() as patch:
        patch.setattr(schema, "MIGRATIONS", schema.MIGRATIONS[:4])
        patch.setattr(schema, "SCHEMA_VERSION", 4)
        with Store.open(settings=settings) as old:
            closed, held = old.create_run("chat", status="queued"), old.create_run("chat", status="running")
            turn = old.create_run("agent", status="queued")
    with Store.open(settings=settings) as store:
        after = {r.id: (r.status, r.owner_pid) for r in (store.get_run(i) for i in (closed.id, held.id, turn.id))}
    assert after == {closed.id: ("idle", None), held.id: ("idle", os.getpid()), turn.id: ("queued", os.getpid())}
