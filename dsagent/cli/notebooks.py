"""Notebook commands: ``run`` (a parameterized notebook as a recorded run) and ``inspect`` (its parameters).

Imports stay inside the commands: ``dsagent run`` starts its kernel before
papermill and nbformat finish loading (see ``runs/notebook_run.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dsagent.artifacts.models import Run
    from dsagent.runs.notebook_run import CellProgress, NotebookOutcome

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run a parameterized notebook (papermill) as a recorded run; its notebook and outputs become artifacts")
    p.add_argument("notebook", help="the .ipynb to run")
    p.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                   help="a parameter, typed as papermill types it (0.5 float, True bool); text if the notebook declares it str")
    p.add_argument("-r", "--parameter-raw", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"), help="a parameter kept as a string")
    p.add_argument("-f", "--parameters-file", action="append", default=[], metavar="YAML", help="parameters from a YAML file (repeatable)")
    p.add_argument("--allow-unknown-parameters", action="store_true", help="inject parameters the notebook does not declare, as papermill does (default: an unknown name is an error)")
    p.add_argument("-o", "--output", help="write the executed notebook here too (default: <workspace>/outputs/notebooks/)")
    p.add_argument("--backend", help="kernel backend (default: the 'backend' setting)")
    p.add_argument("--timeout", type=float, help="seconds one cell may run (default: the 'execution_timeout' setting)")
    p.add_argument("--cwd", help="the kernel's work dir (default: the notebook's folder on local backends)")
    p.add_argument("-k", "--kernel", help="kernelspec to use instead of the notebook's")
    p.add_argument("--log-output", action="store_true", help="print the cells' stdout/stderr as they run")
    p.add_argument("--no-progress", action="store_true", help="no progress bar or progress lines")
    p.add_argument("--json", action="store_true", help="print the finished run as one JSON object")
    p.add_argument("--no-server", action="store_true", help="run here even if `dsagent serve` runs on this workspace (by default it takes the run)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("inspect", help="list a notebook's parameters (name, type, default, help) as papermill infers them")
    p.add_argument("notebook")
    p.add_argument("--json", action="store_true", help="one JSON object per parameter")
    p.set_defaults(func=cmd_inspect)


def cmd_inspect(args: argparse.Namespace) -> int:
    from dsagent.runs.notebook_input import notebook_parameters

    rows = notebook_parameters(args.notebook)
    if args.json:
        for row in rows:
            print(json.dumps(row))
        return 0
    if not rows:
        print(f"{args.notebook} has no parameters (no cell tagged 'parameters', or it assigns nothing)")
        return 0
    widths = [max(len(str(r[k])) for r in [*rows, {"name": "NAME", "type": "TYPE", "default": "DEFAULT"}]) for k in ("name", "type", "default")]
    print(f"{'NAME':{widths[0]}}  {'TYPE':{widths[1]}}  {'DEFAULT':{widths[2]}}  HELP")
    for r in rows:
        print(f"{r['name']:{widths[0]}}  {r['type']:{widths[1]}}  {r['default']:{widths[2]}}  {r['help']}".rstrip())
    return 0


def _yaml_parameters(files: list[str]) -> dict[str, Any]:
    from dsagent.errors import DsagentError

    merged: dict[str, Any] = {}
    for name in files:
        import yaml

        try:
            data = yaml.safe_load(Path(name).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise DsagentError(f"cannot read parameters from {name}: {exc}", hint="pass a readable YAML file of name: value pairs") from None
        if data is not None and not isinstance(data, dict):
            raise DsagentError(f"{name} holds a YAML {type(data).__name__}, not a mapping of parameters", hint="write it as  name: value  lines")
        merged.update(data or {})
    return merged


class _ProgressLines:
    """Progress as plain lines on stderr (when it is not a terminal)."""

    def __call__(self, step: "CellProgress") -> None:
        if step.execution is None:
            return
        ex = step.execution
        status = "ok" if ex.ok else ex.status
        print(f"cell {step.index + 1}/{step.total} {status} in {ex.duration:.2f}s", file=sys.stderr, flush=True)


def cmd_run(args: argparse.Namespace) -> int:
    from dsagent.runs.launch_env import RUN_ID_FILE_ENV

    # before the heavy imports: a server on this workspace runs it on a warm kernel; a process the dashboard
    # launched is meant to own its run (it reports the run id to the page and is what Cancel signals)
    if not args.no_server and RUN_ID_FILE_ENV not in os.environ:
        code = _hand_off(args)
        if code is not None:
            return code
    import asyncio
    import signal

    from dsagent.cli import EXIT_CANCELLED
    from dsagent.runs.launch_env import take_launch_env
    from dsagent.runs.notebook_run import execute_notebook_run

    started: dict[str, Any] = {}
    launch = take_launch_env()  # set when the dashboard started this process

    def on_run(run: "Run", path: Path) -> None:
        started.update(run=run, path=path)
        launch.report(run.id)
        print(f"run {run.id}: {args.notebook} on {run.backend}", file=sys.stderr, flush=True)

    tty = sys.stderr.isatty()
    quiet = args.no_progress or args.json and not tty

    async def main() -> "NotebookOutcome":
        task = asyncio.current_task()
        if task is not None:  # SIGTERM cancels like Ctrl-C (the recorder takes this over while the run is open)
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        return await execute_notebook_run(
            args.notebook,
            _yaml_parameters(args.parameters_file),
            text_parameters=dict(args.parameter),
            raw_parameters=dict(args.parameter_raw),
            allow_unknown_parameters=args.allow_unknown_parameters,
            backend=args.backend,
            output_path=args.output,
            timeout=args.timeout,
            cwd=args.cwd,
            kernel_name=args.kernel,
            progress_bar=tty and not args.no_progress,
            on_cell=None if quiet or tty else _ProgressLines(),
            on_run=on_run,
            stdout_file=sys.stdout if args.log_output else None,
            stderr_file=sys.stderr if args.log_output else None,
            recorder_options={"launched": launch.launched} if launch.launched else None,
        )

    t0 = time.perf_counter()
    try:
        outcome = asyncio.run(main())
    except (KeyboardInterrupt, asyncio.CancelledError):
        where = f"run {started['run'].id} cancelled; partial notebook: {started['path']}" if started else "cancelled before the run started"
        print(where, file=sys.stderr)
        return EXIT_CANCELLED
    return _report(outcome, args, time.perf_counter() - t0)


def _report(outcome: "NotebookOutcome", args: argparse.Namespace, seconds: float) -> int:
    failure = None if outcome.failure is None else (outcome.failure.describe(), outcome.failure.kind)
    return _report_run(outcome.run.to_json(), str(outcome.notebook_path), len(outcome.artifacts), failure, args, seconds)


def _report_run(run: dict[str, Any], notebook: str, artifacts: int, failure: tuple[str, str] | None, args: argparse.Namespace, seconds: float) -> int:
    """The last lines of a run, local or handed off; its exit code. ``failure``: (description, kind)."""
    from dsagent.cli import EXIT_CELL_ERROR, EXIT_KERNEL_DIED, EXIT_OK, EXIT_TIMEOUT

    if args.json:
        print(json.dumps({**run, "notebook": notebook, "artifacts": artifacts, "seconds": round(seconds, 3)}))
    if failure is None:
        if not args.json:
            print(f"run {run['id']} succeeded in {seconds:.1f}s: {artifacts} artifacts; notebook: {notebook}")
        return EXIT_OK
    print(f"error: run {run['id']} failed: {failure[0]}\n  notebook with the error cell: {notebook}", file=sys.stderr)
    return {"timeout": EXIT_TIMEOUT, "died": EXIT_KERNEL_DIED}.get(failure[1], EXIT_CELL_ERROR)


def _hand_off(args: argparse.Namespace) -> int | None:
    """Run the notebook on the workspace's ``dsagent serve``; its exit code, or None to run it here (said once on stderr)."""
    from dsagent.runs.handoff import HandoffClient, HandoffUnavailable, find_server
    from dsagent.settings import Settings

    advert = find_server(Path(Settings().home).expanduser().resolve())
    if advert is None:
        return None
    t0 = time.perf_counter()
    absolute = lambda p: None if p is None else str(Path(p).expanduser().resolve())  # noqa: E731 - the server has another cwd
    request = {
        "notebook": absolute(args.notebook), "parameters": _yaml_parameters(args.parameters_file), "text_parameters": dict(args.parameter),
        "raw_parameters": dict(args.parameter_raw), "backend": args.backend, "output": absolute(args.output), "timeout": args.timeout,
        "cwd": absolute(args.cwd), "kernel": args.kernel, "log_output": bool(args.log_output),
        "allow_unknown_parameters": bool(args.allow_unknown_parameters),
    }  # fmt: skip
    client = HandoffClient(advert)
    try:
        json.dumps(request)
        answer = client.submit(request)
    except (HandoffUnavailable, TypeError, ValueError) as exc:
        print(f"dsagent serve (pid {advert.pid}) did not take the run ({exc}); running it here", file=sys.stderr, flush=True)
        return None
    if "run_id" not in answer:
        from dsagent.errors import DsagentError

        raise DsagentError(answer.get("error", "the server refused the run"), hint=answer.get("hint", ""))
    return _follow(client, answer, args, t0)


def _follow(client: Any, answer: dict[str, Any], args: argparse.Namespace, t0: float) -> int:
    """Print the handed-off run's progress as a local run does; Ctrl-C or SIGTERM cancels it on the server."""
    import signal

    from dsagent.cli import EXIT_CANCELLED, EXIT_USAGE
    from dsagent.runs.handoff import HandoffLost

    run_id = answer["run_id"]
    print(f"run {run_id}: {args.notebook} on {answer.get('backend')} (by dsagent serve, pid {client.advert.pid})", file=sys.stderr, flush=True)
    show = _HandedProgress(args)
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM cancels like Ctrl-C
    try:
        try:
            outcome = client.follow(run_id, show)
        except KeyboardInterrupt:
            client.cancel(run_id)
            outcome = client.follow(run_id, lambda item: None)  # until the server has stopped it
    except (HandoffLost, KeyboardInterrupt) as exc:
        show.close()
        print(f"error: lost contact with dsagent serve (pid {client.advert.pid}) running run {run_id}: {exc or 'interrupted'}\n"
              f"  hint: the run goes on there; see it with: dsagent runs show {run_id}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        signal.signal(signal.SIGTERM, previous)
    show.close()
    if outcome.get("cancelled"):
        print(f"run {run_id} cancelled; partial notebook: {outcome.get('notebook')}", file=sys.stderr)
        return EXIT_CANCELLED
    if "error" in outcome:
        from dsagent.errors import DsagentError

        raise DsagentError(f"run {run_id} failed on the server: {outcome['error']}", hint=outcome.get("hint") or "see the dashboard's run page")
    failure = outcome.get("failure")
    return _report_run(outcome["run"], outcome["notebook"], outcome["artifacts"], failure and (failure["describe"], failure["kind"]), args,
                       time.perf_counter() - t0)


class _HandedProgress:
    """What ``cmd_run`` shows for a local run, from a handed-off run's progress items."""

    def __init__(self, args: argparse.Namespace) -> None:
        tty = sys.stderr.isatty()
        self.lines = not (args.no_progress or args.json and not tty) and not tty
        self.bar_wanted = tty and not args.no_progress
        self.bar: Any = None

    def __call__(self, item: dict[str, Any]) -> None:
        if item["kind"] in ("stdout", "stderr"):
            stream = sys.stdout if item["kind"] == "stdout" else sys.stderr
            stream.write(item["text"])
            stream.flush()
        elif item["kind"] == "cell":
            if self.lines:
                print(f"cell {item['index'] + 1}/{item['total']} {item['status']} in {item['seconds']:.2f}s", file=sys.stderr, flush=True)
            elif self.bar_wanted:
                if self.bar is None:
                    from tqdm import tqdm

                    self.bar = tqdm(total=item["total"], unit="cell", desc="Executing")
                self.bar.update(item["index"] + 1 - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
