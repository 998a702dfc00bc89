"""The shared pieces of the dashboard's pages, without a browser: chips, formats, the timeline, the Runs address."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import pytest

from dsagent.artifacts import schema
from dsagent.artifacts.models import Event, Run
from dsagent.panel_app import components, formats
from dsagent.panel_app.runs import PAGE_SIZE, _search_args, query_filters

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize("status", schema.RUN_STATUSES)
def test_every_status_has_its_own_chip_with_an_icon(status):
    chip = components.status_chip(status)
    assert f"ds-chip-{status}" in chip and "<svg" in chip and f">{status}</span>" in chip
    assert components.STATUS_ICONS[status] in chip
    assert f".ds-chip-{status} " in components.CSS  # a colour of its own
    assert ("ds-spin" in chip) == (status == "running")


def test_an_unknown_status_is_text_in_a_neutral_chip():
    chip = components.status_chip("<img src=x onerror=alert(1)>")
    assert "ds-chip-unknown" in chip and "<img" not in chip and "&lt;img src=x onerror=alert(1)&gt;" in chip


def test_the_old_badge_is_the_chip():
    from dsagent.panel_app.widgets import status_badge

    assert status_badge is components.status_chip


@pytest.mark.parametrize("seconds, text", [(None, ""), (0.25, "250 ms"), (12.34, "12.3 s"), (245, "4 min 05 s"),
                                           (7385, "2 h 03 min"), (3 * 86400 + 4 * 3600 + 5, "3 d 4 h")])
def test_durations_read_as_people_say_them(seconds, text):
    assert formats.duration(seconds) == text


def test_a_run_s_duration_while_it_runs_and_before_it_started():
    started = NOW - timedelta(minutes=3)
    assert formats.run_duration(Run(1, "exec", "queued")) == ""
    assert formats.run_duration(Run(1, "exec", "running", started=started)) == "…"
    assert formats.run_duration(Run(1, "exec", "succeeded", started=started, finished=NOW)) == "3 min 00 s"


@pytest.mark.parametrize("size, text", [(None, ""), (512, "512 B"), (1536, "1.5 KB"), (3 * 2**20, "3.0 MB"), (5 * 2**40, "5120.0 GB")])
def test_sizes(size, text):
    assert formats.size(size) == text


@pytest.mark.parametrize("ago, text", [(timedelta(seconds=20), "just now"), (timedelta(minutes=5), "5 min ago"),
                                       (timedelta(hours=3, minutes=59), "3 h ago"), (timedelta(hours=30), "yesterday"),
                                       (timedelta(days=12), "12 days ago"), (timedelta(days=45), "2026-10-11")])
def test_relative_times(ago, text):
    assert formats.relative_time(NOW - ago, NOW) == text


def test_a_time_cell_shows_the_exact_time_on_hover():
    cell = formats.time_cell(datetime(2026, 11, 25, 11, 55, 7, tzinfo=timezone.utc), NOW)
    assert cell == ('<time datetime="2026-11-25T11:55:07+00:00" title="2026-11-25 11:55:07 UTC">4 min ago</time>')
    assert formats.time_cell(None, NOW) == ""


def test_the_timeline_folds_each_event_s_details_and_escapes_them():
    events = [
        Event(7, 1, NOW, "cell_started", {"cell": 0, "code": "import pandas as pd\nprint(1)"}),
        Event(7, 2, NOW, "cell_finished", {"cell": 0, "status": "ok", "duration": 0.5, "artifacts": 2}),
        Event(7, 3, NOW, "record", {"name": "<script>alert(1)</script>", "value": {"rows": [1, 2], "note": "a & b"}}),
    ]
    html = components.timeline(events)
    assert html.count("<details>") == 3 and "<details open" not in html  # folded until clicked
    assert "cell 0: import pandas as pd" in html and "cell 0 ok in 0.5 s, 2 artifacts" in html
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<li><b>note</b>: a &amp; b</li>" in html  # a mapping as a list, not JSON
    assert '{"rows"' not in html
    assert components.timeline([]) == ""


def test_empty_states_escape_their_title_and_keep_the_page_s_hint():
    html = components.empty_state("No <b>runs</b>", "Run <code>dsagent run NB.ipynb</code>")
    assert "No &lt;b&gt;runs&lt;/b&gt;" in html and "<code>dsagent run NB.ipynb</code>" in html


def test_the_runs_address_gives_the_filters_and_ignores_what_is_not_one():
    state = query_filters({"kind": "notebook", "status": "failed", "q": "sales", "since": "2026-11-01", "until": "nonsense",
                           "sort": "longest", "page": "3"})
    assert state == {"kind": "notebook", "status": "failed", "text": "sales", "dates": (date(2026, 11, 1), None), "sort": "longest",
                     "offset": 2 * PAGE_SIZE}
    assert query_filters({"kind": "nope", "status": "'; drop", "sort": "id", "page": "-1"}) == {}
    asked = _search_args(state)
    assert asked["kind"] == "notebook" and asked["status"] == "failed" and asked["text"] == "sales"
    assert asked["sort"] == "duration" and asked["descending"] is True and asked["offset"] == 100 and asked["limit"] == PAGE_SIZE
    assert asked["since"] == datetime(2026, 11, 1, tzinfo=timezone.utc) and asked["until"] is None
    default = _search_args({})
    assert default["kind"] is None and default["status"] is None and default["sort"] == "id" and default["descending"] is True
