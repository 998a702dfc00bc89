"""The sweep's group commit on a real store: results that arrive together share one transaction, in order."""

from __future__ import annotations

import asyncio

import pytest

from dsagent.artifacts.models import utcnow
from dsagent.artifacts.store import Store
from dsagent.runs.batch_writer import GroupWriter


def _done(status: str) -> list:
    now = utcnow()
    return [("status", "running", None, now), ("events", [("cell_finished", {"cell": 0}, now)], None, now), ("status", status, None, now)]


async def test_results_that_arrive_together_share_a_transaction(settings):
    with Store.open(settings=settings) as store:
        batch = store.create_run("batch")
        children = store.create_children(batch.id, [{"i": i} for i in range(5)], title="nb")
        writer = GroupWriter(store, delay=5.0)  # long: only flush() may end the wait
        seen: list[tuple[int, str]] = []
        for child in children:
            writer.add(child.id, [("status", "running", None, utcnow())])
        for i, child in enumerate(children):
            writer.add(child.id, _done("failed" if i == 2 else "succeeded"), then=lambda run: seen.append((run.id, run.status)))
        assert seen == [] and store.get_run(children[0].id).status == "queued"  # nothing written before the group
        await asyncio.wait_for(writer.flush(), 10)
        assert seen == [(c.id, "failed" if i == 2 else "succeeded") for i, c in enumerate(children)]  # in order, after the commit
        assert (writer.groups, writer.writes) == (1, 10)
        writer.add(children[0].id, [("events", [("note", {"late": True}, utcnow())], None, utcnow())])
        await writer.close()  # a last group is written before close returns
        assert writer.groups == 2 and store.events(children[0].id)[-1].type == "note"


async def test_a_failed_group_write_surfaces_to_the_sweep(settings):
    with Store.open(settings=settings) as store:
        writer = GroupWriter(store, delay=0.0)
        writer.add(999_999, [("status", "running", None, utcnow())])  # no such run
        with pytest.raises(Exception, match="no run with id 999999"):
            await asyncio.wait_for(writer.flush(), 10)
        with pytest.raises(Exception, match="no run with id 999999"):
            writer.add(1, [])
