"""``dsagent batch NOTEBOOK --grid grid.yaml`` (a sweep on Dask) and ``dsagent batch compare BATCH`` (its table)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dsagent.runs.batch import ChildUpdate

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "batch", help="run a notebook once per parameter set of a grid on Dask (`batch compare BATCH` tabulates the results)",
        description="dsagent batch NOTEBOOK --grid grid.yaml [options]   |   dsagent batch compare BATCH [--csv F | --parquet F]",
    )
    p.add_argument("target", metavar="NOTEBOOK|compare", help="the .ipynb to sweep, or `compare`")
    p.add_argument("batch_id", nargs="?", type=int, metavar="BATCH", help="with compare: the batch run id")
    p.add_argument("--grid", metavar="YAML", help="alpha: [0.1, 0.5] lines (their product), or a list of parameter sets")
    p.add_argument("--backend", help="kernel backend on the workers (default: the 'backend' setting)")
    p.add_argument("--cluster", default="local", metavar="local|ADDRESS", help="`local` (a LocalCluster here) or a Dask scheduler, tcp://HOST:8786")
    p.add_argument("--workers", type=int, help="worker processes of the LocalCluster (default: the 'batch_workers' setting)")
    p.add_argument("--max-parallel", type=int, metavar="N", help="children in flight at once (default: every worker thread, plus one waiting on each worker)")
    p.add_argument("--retries", type=int, metavar="K", help="further attempts of a failed child (default: the 'batch_retries' setting)")
    p.add_argument("--timeout", type=float, help="seconds one cell may run")
    p.add_argument("--allow-unknown-parameters", action="store_true", help="inject parameters the notebook does not declare, as papermill does (default: an unknown name is an error)")
    p.add_argument("-y", "--yes", action="store_true", help="run a grid larger than 'batch_confirm_above' without asking")
    p.add_argument("--csv", metavar="FILE", help="with compare: also write the table as CSV (and keep it as an artifact)")
    p.add_argument("--parquet", metavar="FILE", help="with compare: also write the table as Parquet (and keep it as an artifact)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_batch)


def cmd_batch(args: argparse.Namespace) -> int:
    from dsagent.errors import DsagentError

    if args.target == "compare":
        if args.batch_id is None:
            raise DsagentError("which batch? dsagent batch compare BATCH", hint="`dsagent runs ls --kind batch` lists batches")
        return _compare(args)
    if not args.grid:
        raise DsagentError("a sweep needs --grid FILE", hint="write  alpha: [0.1, 0.5]  lines into a YAML file and pass --grid FILE")
    return _sweep(args)


def _confirm(yes: bool) -> Any:
    def ask(count: int) -> bool:
        if yes:
            return True
        if not sys.stdin.isatty():
            return False
        answer = input(f"the grid makes {count} runs; start them all? [y/N] ")
        return answer.strip().lower() in ("y", "yes")

    return ask


class _Progress:
    """A tqdm bar over the children on a terminal, plain lines otherwise."""

    def __init__(self, quiet: bool, launch: Any = None) -> None:
        self.quiet = quiet
        self.launch = launch
        self.bar: Any = None

    def start(self, run: Any, children: list[Any]) -> None:
        if self.launch is not None:
            self.launch.report(run.id)
        print(f"batch run {run.id}: {len(children)} children (runs {children[0].id}-{children[-1].id})", file=sys.stderr, flush=True)
        if sys.stderr.isatty() and not self.quiet:
            from tqdm import tqdm

            self.bar = tqdm(total=len(children), unit="run", file=sys.stderr)

    def __call__(self, update: "ChildUpdate") -> None:
        what = f"run {update.run_id} {update.status}" + (f" (attempt {update.attempt}, retrying)" if update.retrying else "")
        if self.bar is not None:
            self.bar.set_postfix_str(what)
            self.bar.n = update.done
            self.bar.refresh()
            if update.status != "succeeded" and not update.retrying:
                self.bar.write(f"run {update.run_id} {update.status}: {update.error}")
        elif not self.quiet:
            error = f": {update.error}" if update.error and update.status != "succeeded" else ""
            print(f"child {update.done}/{update.total} {what} in {update.seconds:.1f}s{error}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _sweep(args: argparse.Namespace) -> int:
    import asyncio

    from dsagent.cli import EXIT_CANCELLED, EXIT_CELL_ERROR
    from dsagent.runs.batch import execute_batch
    from dsagent.runs.launch_env import take_launch_env

    launch = take_launch_env()  # set when the dashboard started this process
    progress = _Progress(args.json, launch)
    try:
        outcome = asyncio.run(execute_batch(
            args.target, args.grid, backend=args.backend, cluster=args.cluster, workers=args.workers, max_parallel=args.max_parallel,
            retries=args.retries, timeout=args.timeout, confirm=_confirm(args.yes), on_start=progress.start, on_child=progress,
            launched=launch.launched, allow_unknown_parameters=args.allow_unknown_parameters,
        ))
    except (KeyboardInterrupt, asyncio.CancelledError):
        progress.close()
        print("batch cancelled: its unfinished children are marked cancelled", file=sys.stderr)
        return EXIT_CANCELLED
    progress.close()
    run = outcome.run
    if args.json:
        print(json.dumps({**run.to_json(), "counts": outcome.counts, "children": [c.id for c in outcome.children]}))
    else:
        counts = ", ".join(f"{n} {s}" for s, n in sorted(outcome.counts.items()))
        print(f"batch run {run.id} {run.status}: {counts}; compare: dsagent batch compare {run.id}")
    return 0 if run.status == "succeeded" else EXIT_CELL_ERROR


def _compare(args: argparse.Namespace) -> int:
    from dsagent.artifacts.store import Store
    from dsagent.runs.batch_compare import batch_table, save_table

    with Store.open() as store:
        table = batch_table(store, args.batch_id)
        saved = [save_table(store, table, fmt, path) for fmt, path in (("csv", args.csv), ("parquet", args.parquet)) if path]
    if args.json:
        print(json.dumps({"batch": table.batch.id, "columns": table.columns, "rows": table.rows}, default=str))
    else:
        print(table.format())
    for artifact in saved:
        print(f"saved {artifact.name} (artifact {artifact.id})", file=sys.stderr)
    return 0
