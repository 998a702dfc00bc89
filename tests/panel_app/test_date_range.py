"""The Runs and Artifacts pages' date filters: whole days in UTC, the end day included."""

from datetime import date, datetime, timezone

from dsagent.panel_app.widgets import date_range_bounds


def test_a_picked_range_covers_whole_days_end_included():
    since, until = date_range_bounds((date(2026, 1, 2), date(2026, 1, 3)))
    assert since == datetime(2026, 1, 2, tzinfo=timezone.utc) and until == datetime(2026, 1, 4, tzinfo=timezone.utc)


def test_an_open_end_or_no_range_is_no_bound():
    assert date_range_bounds(None) == (None, None)
    assert date_range_bounds((None, date(2026, 1, 3)))[0] is None
    assert date_range_bounds((date(2026, 1, 2), None))[1] is None
