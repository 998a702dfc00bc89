"""The dashboard's store queries: filtered/sorted/counted run pages, artifact pages, overview counts, reads."""

from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone

import pytest

from dsagent.artifacts.models import NewArtifact
from dsagent.errors import DsagentError, NotFound


@pytest.fixture
def filled(store):
    runs = []
    for i in range(7):
        run = store.create_run("exec" if i % 2 else "notebook", title=f"Report {i}" if i < 5 else f"other {i}")
        store.update_run_status(run.id, "failed" if i == 3 else "succeeded")
        runs.append(run)
    child = store.create_run("batch-child", title="child", parent_id=runs[0].id)
    added = store.add_artifacts(runs[0].id, [
        NewArtifact("a.png", "image", "image/png", b"\x89PNG one"),
        NewArtifact("b.csv", "table", "text/csv", b"x\n1\n"),
        NewArtifact("c.txt", "text", "text/plain", b"hello"),
    ])
    return runs, child, added


def test_run_pages_filter_sort_and_count(store, filled):
    runs, child, _ = filled
    page = store.search_runs(limit=3)
    assert page.total == 8 and [r.id for r in page.items] == [child.id, runs[6].id, runs[5].id]
    second = store.search_runs(limit=3, offset=3)
    assert [r.id for r in second.items] == [runs[4].id, runs[3].id, runs[2].id]
    assert [r.id for r in store.search_runs(status="failed").items] == [runs[3].id]
    assert store.search_runs(text="report").total == 5  # case-insensitive substring of the title
    assert store.search_runs(kind="exec", text="report").total == 2
    assert [r.id for r in store.search_runs(parent_id=runs[0].id).items] == [child.id]
    oldest = store.search_runs(sort="id", descending=False, limit=1).items[0]
    assert oldest.id == runs[0].id
    assert [r.title for r in store.search_runs(sort="title", descending=False, limit=2).items] == ["Report 0", "Report 1"]
    future = datetime.now(timezone.utc) + timedelta(days=1)
    assert store.search_runs(since=future).total == 0 and store.search_runs(until=future).total == 8


def test_bad_sort_and_limits_name_the_parameter(store):
    with pytest.raises(DsagentError) as info:
        store.search_runs(sort="id; DROP TABLE runs")
    assert info.value.parameter == "sort"
    with pytest.raises(DsagentError):
        store.search_runs(limit=0)


def test_artifact_pages_filter_by_mime_and_excluded_kind(store, filled):
    _, _, added = filled
    assert [a.name for a in store.search_artifacts(exclude_kind="image").items] == ["c.txt", "b.csv"]
    assert [a.name for a in store.search_artifacts(mime="text/").items] == ["c.txt", "b.csv"]
    first = store.search_artifacts(limit=2)
    rest = store.search_artifacts(limit=2, cursor=first.next_cursor)
    assert [a.name for a in first.items + rest.items] == ["c.txt", "b.csv", "a.png"] and rest.next_cursor is None
    assert store.search_artifacts(name="*.png").items[0].id == added[0].id


def test_overview_read_artifact_and_owner(store, filled):
    runs, child, added = filled
    summary = store.overview()
    assert summary["runs_by_status"] == {"succeeded": 6, "failed": 1, "running": 1}
    assert summary["artifacts_by_kind"] == {"image": 1, "table": 1, "text": 1}
    assert [r.id for r in summary["running"]] == [child.id]
    artifact, data = store.read_artifact(added[2].id)
    assert artifact.name == "c.txt" and data == b"hello"
    with pytest.raises(NotFound):
        store.read_artifact(999)
    assert store.run_owner(runs[0].id).pid == os.getpid()


def test_the_event_outline_counts_a_run_s_events_and_finds_its_dashboard_actions(store):
    run = store.create_run("notebook", title="outlined")
    first = store.event_outline(run.id)
    assert first.last_seq == 1 and first.actions == []  # the status event of its creation
    store.append_events(run.id, [("launched", {"user": "alice", "via": "dashboard"})] + [("output", {"cell": 0, "text": str(i)}) for i in range(500)]
                        + [("cancel_requested", {"user": "bob", "via": "cli"}), ("cancel_requested", {"user": "carol", "via": "dashboard"}),
                           ("status", {"via": "dashboard"})])
    outline = store.event_outline(run.id)
    assert outline.last_seq == 505 and len(store.events(run.id)) == 505  # seqs count 1, 2, 3 ...: the newest is how many
    assert [(e.seq, e.type, e.payload["user"]) for e in outline.actions] == [(2, "launched", "alice"), (504, "cancel_requested", "carol")]
    assert store.event_outline(run.id + 1000).last_seq == 0
