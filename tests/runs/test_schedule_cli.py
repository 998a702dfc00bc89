"""`dsagent schedule add` names its notebook as the dashboard's Schedules form picks it: a path, or the name of a
notebook in the notebook library (the workspace's notebooks/ and the notebook_folders setting), from any folder."""

from __future__ import annotations

from notebook_helpers import run_cli, write_notebook

from dsagent.artifacts.store import Store


def _targets(settings) -> dict[str, dict]:
    """The stored schedules' targets, by name."""
    with Store.open(settings=settings) as store:
        return {s.name: s.target for s in store.list_schedules(limit=50).items}


def test_a_bare_name_is_looked_up_in_the_notebook_library(settings, workspace_home, tmp_path):
    library = workspace_home / "notebooks"  # where the dashboard's uploads land: the Notebooks page lists it
    library.mkdir(parents=True)
    report = write_notebook(library / "weekly_report.ipynb", "print(region)", params="region = 'north'")
    elsewhere = tmp_path / "elsewhere"  # a folder with no notebook in it
    elsewhere.mkdir()
    grid = tmp_path / "grid.yaml"
    grid.write_text("region: [north, south]\n")

    for name, how in (("bare", ["--notebook", "weekly_report"]), ("suffixed", ["--notebook", "weekly_report.ipynb", "-p", "region", "east"]),
                      ("sweep", ["--batch", "weekly_report", "--grid", str(grid)])):
        added = run_cli(workspace_home, "schedule", "add", name, "--cron", "0 6 * * *", *how, cwd=elsewhere)
        assert added.returncode == 0, added.stderr
        assert f"schedule {name}: " in added.stdout
    targets = _targets(settings)
    assert {name: target["notebook"] for name, target in targets.items()} == dict.fromkeys(("bare", "suffixed", "sweep"), str(report.resolve()))
    assert targets["suffixed"]["text_parameters"] == {"region": "east"}


def test_a_path_still_works_and_an_unknown_name_says_what_to_do(settings, workspace_home, tmp_path):
    (workspace_home / "notebooks").mkdir(parents=True)
    write_notebook(workspace_home / "notebooks" / "weekly_report.ipynb", "1 + 1")
    own = write_notebook(tmp_path / "weekly_report.ipynb", "2 + 2")  # a file of that name where the command runs wins

    by_path = run_cli(workspace_home, "schedule", "add", "mine", "--cron", "0 6 * * *", "--notebook", "weekly_report.ipynb", cwd=tmp_path)
    assert by_path.returncode == 0, by_path.stderr
    assert _targets(settings)["mine"]["notebook"] == str(own.resolve())

    missing = run_cli(workspace_home, "schedule", "add", "typo", "--cron", "0 6 * * *", "--notebook", "weekly_reprot", cwd=tmp_path / "..")
    assert missing.returncode == 2
    error = missing.stderr
    assert "no notebook 'weekly_reprot'" in error and str(workspace_home / "notebooks") in error  # what was looked for, and where
    assert "give the notebook's path" in error and "weekly_report.ipynb" in error  # what to do: a path, or a name it knows
    assert "typo" not in _targets(settings)
