"""A sweep's group commit (``Store.apply_journals``) writes what one ``apply_journal`` per child writes."""

from __future__ import annotations

import time

import pytest

from dsagent.artifacts.journal import RunJournal
from dsagent.artifacts.models import NewArtifact
from dsagent.errors import NotFound


def _journal(run_id: int, settings, n: int, *, fail: bool = False) -> list:
    """A child's journal as a worker's recorder makes it: running, cell events, artifacts, the end."""
    journal = RunJournal(run_id, settings)
    journal.update_run_status(run_id, "running")
    for cell in range(2):
        journal.append_events(run_id, [("cell_started", {"cell": cell, "n": n})])
        journal.add_artifacts(run_id, [])  # a cell with no output: nothing to store
        journal.append_events(run_id, [("cell_finished", {"cell": cell}), ("record", {"name": "score", "value": n * 1.5})])
    journal.add_artifacts(run_id, [NewArtifact(f"child{n}.ipynb", "notebook", "application/x-ipynb+json", b'{"n": %d}' % n, cell=None),
                                   NewArtifact("out.txt", "file", "text/plain", b"same bytes in every child")])
    journal.update_run_status(run_id, "failed" if fail else "succeeded", error="ValueError: boom" if fail else None)
    return journal.entries


def _snapshot(store, run_id: int) -> tuple:
    run = store.get_run(run_id)
    # the first two (queued, running) are the caller's own, written at different times for the two sets
    events = [(e.seq, e.type, e.payload, e.time if e.seq > 2 else None) for e in store.events(run_id)]
    artifacts = [(a.name, a.kind, a.sha256, a.size, store.read_bytes(a.id)) for a in reversed(store.list_artifacts(run_id=run_id).items)]
    return (run.status, run.error, run.started, run.finished, run.owner_pid), events, artifacts


def test_a_group_writes_what_one_journal_per_child_writes(store, settings):
    batch = store.create_run("batch")
    one_by_one = store.create_children(batch.id, [{"n": i} for i in range(3)], title="nb")
    grouped = store.create_children(batch.id, [{"n": i} for i in range(3)], title="nb")
    for child in one_by_one + grouped:
        store.update_run_status(child.id, "running")  # the caller marks a child running when it submits it
    journals = [_journal(c.id, settings, i, fail=i == 1) for i, c in enumerate(one_by_one)]
    time.sleep(0.01)
    for child, entries in zip(one_by_one, journals):
        store.apply_journal(child.id, entries)
    # the same entries (same worker times) for the second set, in ONE transaction
    writes = [(g.id, [(kind, first, second, when) for kind, first, second, when in entries]) for g, entries in zip(grouped, journals)]
    runs = store.apply_journals(writes)
    assert sorted(runs) == [g.id for g in grouped]
    for a, b in zip(one_by_one, grouped):
        assert _snapshot(store, a.id) == _snapshot(store, b.id)
        assert runs[b.id].status == store.get_run(b.id).status
    assert [runs[g.id].status for g in grouped] == ["succeeded", "failed", "succeeded"]
    assert runs[grouped[1].id].error == "ValueError: boom"


def test_a_group_marks_submitted_children_running_and_may_hold_their_whole_life(store, settings):
    """The caller's ``running`` mark can share a group with that child's results, or go in a group before them."""
    batch = store.create_run("batch")
    early, late = store.create_children(batch.id, [{"n": 1}, {"n": 2}], title="nb")
    entries = _journal(late.id, settings, 2)
    mark = ("status", "running", None, entries[0][3])
    store.apply_journals([(early.id, [mark]), (late.id, [mark]), (late.id, entries)])
    assert store.get_run(early.id).status == "running" and store.get_run(early.id).owner_pid is not None
    done = store.get_run(late.id)
    assert (done.status, done.started, done.finished) == ("succeeded", entries[0][3], entries[-1][3])
    statuses = [e.payload["status"] for e in store.events(late.id) if e.type == "status"]
    assert statuses == ["queued", "running", "succeeded"]  # one running event, not two
    assert [e.seq for e in store.events(late.id)] == list(range(1, 10))


def test_a_group_with_an_unknown_run_writes_nothing(store, settings):
    batch = store.create_run("batch")
    (child,) = store.create_children(batch.id, [{"n": 1}], title="nb")
    with pytest.raises(NotFound):
        store.apply_journals([(child.id, _journal(child.id, settings, 1)), (10_000, [("status", "running", None, child.created)])])
    assert store.get_run(child.id).status == "queued" and [e.type for e in store.events(child.id)] == ["status"]


def test_children_are_created_together_as_create_run_would_make_them(store):
    batch = store.create_run("batch")
    single = store.create_run("batch-child", status="queued", title="nb [01]", params={"n": 0}, backend="local", parent_id=batch.id)
    made = store.create_children(batch.id, [{"n": i} for i in range(12)], title="nb", backend="local")
    assert [c.title for c in made[:2]] == ["nb [01]", "nb [02]"] and [c.params for c in made] == [{"n": i} for i in range(12)]
    assert [c.id for c in made] == list(range(single.id + 1, single.id + 13))  # ids from the same counter, in order
    first = made[0]
    assert (first.kind, first.status, first.parent_id, first.backend, first.owner_pid, first.owner_host, first.started) == (
        single.kind, single.status, single.parent_id, single.backend, single.owner_pid, single.owner_host, None)
    assert [(e.seq, e.type, e.payload) for e in store.events(first.id)] == [(e.seq, e.type, e.payload) for e in store.events(single.id)]
    assert store.create_run("exec").id == made[-1].id + 1
