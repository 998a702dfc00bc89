"""The run page's, the batch view's and Compare's parts without a browser: a readable error, the who line, the
events window followed live, the grid and the children, Compare's defaults and highlighted differences."""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from types import SimpleNamespace

import pytest

from dsagent.artifacts.models import Event, Run
from dsagent.panel_app import batch_view, compare_page, run_events, run_page
from dsagent.runs.batch_compare import compare_runs

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=timezone.utc)
XSS = "<img src=x onerror=alert(1)>"


def test_a_dead_kernel_s_error_reads_as_a_reason_then_its_last_lines():
    error = ("cell 2 (In [2]) kernel died: DeadKernelError: the kernel crashed with a segmentation fault (SIGSEGV)"
             f"\nthe last lines it printed:\n| loading {XSS}\n| chunk 2")
    html = run_page.error_html(error)
    assert "<div class='ds-error-head'>cell 2 (In [2]) kernel died: DeadKernelError: the kernel crashed" in html
    assert "the last lines it printed:</div><pre>| loading &lt;img src=x onerror=alert(1)&gt;\n| chunk 2</pre>" in html
    assert "<img" not in html


def test_a_sweep_s_one_line_error_gets_a_line_per_part():
    error = ("1 of 2 children did not succeed (1 failed, 1 succeeded); most common error (1 child): cell 2 raised: ValueError: x; "
             "hint: open a failed child's page")
    html = run_page.error_html(error)
    assert "ds-error-head'>1 of 2 children did not succeed (1 failed, 1 succeeded)</div>" in html
    assert "<pre>most common error (1 child): cell 2 raised: ValueError: x\nhint: open a failed child&#x27;s page</pre>" in html


def test_the_who_line_names_what_was_done_from_the_dashboard_and_escapes_the_user():
    events = [Event(1, 2, NOW, "launched", {"user": "alice", "via": "dashboard"}),
              Event(1, 9, NOW, "cancel_requested", {"user": XSS, "via": "dashboard"})]
    line = run_page.who_line(events)
    assert line.startswith("launched by alice at 12:00:00; cancel asked by &lt;img")
    assert run_events.is_action(events[0]) and not run_events.is_action(Event(1, 3, NOW, "cancel_requested", {"user": "x", "via": "cli"}))


def test_an_ended_run_without_artifacts_never_says_yet():
    from dsagent.artifacts.models import Page

    empty = Page([], None)
    running = Run(1, "notebook", "running", started=NOW)
    assert "No artifacts yet" in run_page.artifacts_html(running, 0, empty)
    for status in ("succeeded", "failed", "cancelled"):
        html = run_page.artifacts_html(Run(1, "notebook", status, started=NOW, finished=NOW), 0, empty)
        assert "yet" not in html and "This run saved no plots, tables or files." in html
    batch = run_page.artifacts_html(Run(2, "batch", "succeeded", started=NOW, finished=NOW), 0, empty)
    assert "No artifacts of the batch itself" in batch and "yet" not in batch


def _events(first: int, last: int) -> list[Event]:
    return [Event(5, seq, NOW, "output", {"cell": 0, "output_type": "stream", "name": "stdout", "text": f"line {seq}"})
            for seq in range(first, last + 1)]


def test_a_followed_window_puts_new_events_on_top_and_leaves_the_panes_it_has():
    from dsagent.artifacts.run_queries import EventOutline

    view = run_events.EventsView(SimpleNamespace(), 5, (EventOutline(100, []), _events(1, 100)))
    assert view.last_seq == 100 and len(view.list.objects) == 1
    kept = view.list.objects[0]
    seq = 100
    for _ in range(40):  # a run that writes a few events per poll
        view._prepend(_events(seq + 1, seq + 3))
        view._count(seq + 3, [])
        seq += 3
        if len(view.list.objects) > 1:
            assert view.list.objects[1] is kept or kept not in view.list.objects  # panes shown stay the same objects (their DOM too)
            kept = view.list.objects[0]
        shown = [e.seq for chunk in view.chunks for e in chunk]
        # at least a window and at most two (the oldest pane goes once the newer ones hold a window)
        assert max(shown) == seq and run_events.EVENTS_PAGE <= len(shown) <= 2 * run_events.EVENTS_PAGE + 3
        assert len(view.list.objects) <= run_events.MAX_CHUNKS
    assert "line 220" in view.list.objects[0].object and "line 217" not in view.list.objects[0].object  # the newest pane: 3 events
    assert 1 not in shown  # the first window's pane is gone
    assert view.position.object == f"events {min(shown):,}–220 of 220, newest first"
    assert view.pager.visible  # more than a window: the pager shows
    assert view.newer.disabled and not view.older.disabled


def test_the_grid_lists_each_parameter_s_values_and_the_children_show_what_varies():
    children = [Run(10 + i, "batch-child", "succeeded", params={"alpha": a, "region": r, "data": "sales.csv"})
                for i, (a, r) in enumerate((a, r) for a in (0.1, 0.5) for r in ("north", XSS))]
    grid = batch_view.grid_values(children, ["alpha", "region", "data"])
    assert grid == {"alpha": [0.1, 0.5], "region": ["north", XSS], "data": ["sales.csv"]}
    html = batch_view.grid_html(grid, len(children))
    assert "<span class='ds-value'>0.1</span><span class='ds-value'>0.5</span>" in html
    assert "&lt;img src=x" in html and "<img" not in html
    assert "(the same in every child)" in html and "4 children: every combination of these values." in html
    frame = batch_view.children_frame(children, batch_view._varying(grid))
    assert frame["parameters"][1] == f"alpha=0.1, region={XSS}"  # plain text: the table escapes it
    assert "ds-chip-succeeded" in frame["status"][0]


@pytest.fixture
def store(tmp_path):
    from dsagent.artifacts import Store
    from dsagent.settings import Settings
    from dsagent.workspace import Workspace

    with Store.open(Workspace(tmp_path / "ws"), Settings(home=str(tmp_path / "ws"))) as opened:
        yield opened


def _rows(html: str) -> dict[str, str]:
    """The comparison's rows by their label."""
    return {found.group(1): row for row in html.split("<tr")[1:] if (found := re.search(r"<th scope='row'>([^<]+)", row))}


def test_compare_fills_in_the_notebook_s_defaults_and_marks_them(tmp_path, store):
    from dsagent.settings import Settings

    settings = Settings(home=str(tmp_path / "ws"))
    folder = tmp_path / "ws" / "notebooks"
    folder.mkdir(parents=True)
    cells = [{"cell_type": "code", "execution_count": None, "id": "p", "metadata": {"tags": ["parameters"]}, "outputs": [],
              "source": 'region = "all"\ntop_n = 5\nstart = pd.Timestamp("2024-01-01")\n'}]
    (folder / "cohorts.ipynb").write_text(json.dumps({"cells": cells, "metadata": {"kernelspec": {"name": "python3", "display_name": "P",
                                                      "language": "python"}}, "nbformat": 4, "nbformat_minor": 5}))
    a = store.create_run("notebook", title="cohorts.ipynb", params={"region": "south", "start": "2025-01-01"})
    b = store.create_run("notebook", title="cohorts.ipynb", params={"top_n": 5})
    c = store.create_run("notebook", title="gone.ipynb", params={"top_n": 3})
    runs = [store.get_run(r.id) for r in (a, b, c)]
    defaults = compare_page.notebook_defaults(SimpleNamespace(settings=settings), store, runs)
    assert defaults[a.id]["region"] == compare_page.Default('"all"', "all") and defaults[c.id] == {}
    assert defaults[a.id]["start"].value is compare_page._UNKNOWN  # an expression: shown as written
    html = compare_page.comparison_html(compare_runs(store, [r.id for r in runs]), runs, defaults)
    rows = _rows(html)
    assert "all<small>default</small>" in rows["region"] and "south" in rows["region"] and "ds-differs" in rows["region"]
    # top_n: 5 by default (a), 5 passed (b), 3 (c): the default counts as the value it is
    assert "5<small>default</small>" in rows["top_n"] and "ds-differs" in rows["top_n"]
    assert 'pd.Timestamp(&quot;2024-01-01&quot;)<small>default</small>' in rows["start"]
    assert "not passed" in rows["region"]  # c's notebook is not in the folders: no default to show, and no "—"
    assert "—" not in html and "ds-differs" not in rows["status"]
    same = compare_page.comparison_html(compare_runs(store, [a.id, b.id]), runs[:2], {a.id: defaults[a.id], b.id: defaults[b.id]})
    assert "ds-differs" not in _rows(same)["top_n"]  # 5 by default and 5 passed: the same value


@pytest.mark.parametrize("raw, ids", [("3,5", [3, 5]), (" 3, 5,3 ,", [3, 5]), ("", [])])
def test_compare_reads_its_ids_from_the_address(raw, ids):
    assert compare_page.parse_ids(raw) == ids


def test_compare_refuses_ids_that_are_not_numbers():
    with pytest.raises(ValueError):
        compare_page.parse_ids("3,abc")
