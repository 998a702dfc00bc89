"""Every notebook in notebooks/ runs on its defaults with the declared dependencies, from a copy of the folder
as a user has it (relative data paths resolve in the notebook's folder); only the files each run wrote are kept."""

from __future__ import annotations

import shutil
from pathlib import Path

from dsagent.artifacts.store import Store
from dsagent.kernel_gateway.local import LocalBackend
from dsagent.runs.notebook_run import execute_notebook_run

SHIPPED = Path(__file__).resolve().parents[2] / "notebooks"


async def test_every_shipped_notebook_runs_on_its_defaults(tmp_path, settings):
    folder = Path(shutil.copytree(SHIPPED, tmp_path / "notebooks", ignore=shutil.ignore_patterns(".dsagent", "*.py")))
    (folder / "not-the-runs.txt").write_text("a file that was there before")
    names = sorted(p.name for p in folder.glob("*.ipynb"))
    assert names == ["energy_timeseries.ipynb", "model_fit.ipynb", "sales_cohorts.ipynb"]
    async with LocalBackend(settings.replace(kernel_pool_replenish_delay=0), pool_size=1) as backend:
        for name in names:
            outcome = await execute_notebook_run(folder / name, backend=backend, settings=settings)
            assert outcome.run.status == "succeeded", (name, outcome.run.error)
            assert any(a.kind == "image" for a in outcome.artifacts), name
    with Store.open(settings=settings) as store:
        files = {a.name for a in store.list_artifacts(kind="file", limit=100).items}
    assert files == {"cohort_retention.csv"}, files  # what sales_cohorts writes; nothing it only read, nothing else there
    assert not (folder / ".dsagent").exists()  # capture's scratch folder is not left in the user's folder
