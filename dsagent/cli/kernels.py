"""Kernel commands: ``backends``, ``exec``, ``settings``."""

from __future__ import annotations

import argparse
import base64
import re
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["register", "OutputPrinter"]

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # IPython colours tracebacks for terminals


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("backends", help="list kernel backends, their configuration and whether they run here")
    p.add_argument("--json", action="store_true", help="one JSON object per backend")
    p.set_defaults(func=cmd_backends)

    p = sub.add_parser("exec", help="run code on a fresh kernel and print its outputs")
    p.add_argument("code", nargs="?", help="the code to run (or use -f)")
    p.add_argument("-f", "--file", help="read the code from this file ('-' for stdin)")
    p.add_argument("--backend", help="kernel backend (default: the 'backend' setting)")
    p.add_argument("--timeout", type=float, help="seconds before the cell is interrupted")
    p.add_argument("--output-dir", help="where images are saved (default: <workspace>/outputs/exec-<time>)")
    p.add_argument("--no-record", action="store_true", help="do not record an `exec` run and its artifacts in the workspace")
    p.set_defaults(func=cmd_exec)

    p = sub.add_parser("settings", help="list every setting with its value, source and help")
    p.set_defaults(func=cmd_settings)



def cmd_backends(args: argparse.Namespace) -> int:
    import json

    from dsagent.kernel_gateway.registry import backend_registry as registry
    from dsagent.settings import Settings

    settings = Settings()
    for name in registry.names():
        try:
            cls = registry.get(name)
            problem = cls.check()
            config = cls(settings).describe()
        except Exception as exc:  # a broken plugin must not hide the others
            problem, config = f"cannot load: {exc}", {}
        row = {"name": name, "usable": problem is None, "problem": problem, "default": name == settings.backend, "config": config}
        if args.json:
            print(json.dumps(row))
            continue
        mark = "*" if row["default"] else " "
        status = "usable" if problem is None else f"NOT usable: {problem}"
        print(f"{mark} {name:10} {status}")
        for key, value in config.items():
            print(f"    {key}: {value}")
    if not args.json:
        print("(* = default; change with DSAGENT_BACKEND or --backend)")
    return 0


class OutputPrinter:
    """Prints outputs as they stream in; saves images to files and names them."""

    def __init__(self, output_dir: Path) -> None:
        self.output_dir = output_dir
        self.saved: list[Path] = []

    def __call__(self, output: dict[str, Any]) -> None:
        kind = output["output_type"]
        if kind == "stream":
            stream = sys.stdout if output["name"] == "stdout" else sys.stderr
            stream.write(output["text"])
            stream.flush()
        elif kind == "error":
            text = "\n".join(output.get("traceback") or [f"{output['ename']}: {output['evalue']}"])
            print(text if sys.stderr.isatty() else _ANSI.sub("", text), file=sys.stderr)
        else:
            self._show_data(output.get("data", {}))

    def _show_data(self, data: dict[str, Any]) -> None:
        for mime, ext in (("image/png", "png"), ("image/jpeg", "jpg"), ("image/svg+xml", "svg")):
            if mime in data:
                self.output_dir.mkdir(parents=True, exist_ok=True)
                path = self.output_dir / f"output-{len(self.saved) + 1}.{ext}"
                raw = data[mime]
                path.write_bytes(raw.encode() if mime == "image/svg+xml" else base64.b64decode(raw))
                self.saved.append(path)
                print(f"[{mime} saved to {path}]")
                return
        if "text/plain" in data:
            text = data["text/plain"]
            print("".join(text) if isinstance(text, list) else text)


def _read_code(args: argparse.Namespace) -> str:
    from dsagent.errors import DsagentError

    if args.file and args.code:
        raise DsagentError("give either CODE or -f FILE, not both", hint="dsagent exec --help")
    if args.file == "-":
        return sys.stdin.read()
    if args.file:
        try:
            return Path(args.file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise DsagentError(f"cannot read {args.file}: {exc}", hint="pass a readable UTF-8 text file") from None
    if args.code is None:
        raise DsagentError("no code given", hint="dsagent exec 'print(1)'  or  dsagent exec -f script.py")
    return args.code


def cmd_exec(args: argparse.Namespace) -> int:
    import asyncio

    from dsagent.cli import EXIT_CELL_ERROR, EXIT_KERNEL_DIED, EXIT_OK, EXIT_TIMEOUT
    from dsagent.runs.exec import exec_code, exec_recorded
    from dsagent.settings import Settings
    from dsagent.workspace import Workspace

    code = _read_code(args)
    settings = Settings()
    output_dir = Path(args.output_dir) if args.output_dir else Workspace.from_settings(settings).outputs_dir / time.strftime("exec-%Y%m%d-%H%M%S")
    printer = OutputPrinter(output_dir)
    if args.no_record:
        result = asyncio.run(exec_code(code, backend=args.backend, timeout=args.timeout, on_output=printer, settings=settings))
    else:
        recorded = asyncio.run(exec_recorded(code, backend=args.backend, timeout=args.timeout, on_output=printer, settings=settings))
        result = recorded.execution
        print(f"[run {recorded.run.id} recorded with {len(recorded.artifacts)} artifacts: dsagent runs show {recorded.run.id}]", file=sys.stderr)
    if result.truncated:
        print("warning: output was truncated (max_output_bytes)", file=sys.stderr)
    if result.status == "ok":
        return EXIT_OK
    err = result.error
    if result.status == "timeout":
        print(f"error: timeout: {err.evalue if err else ''}", file=sys.stderr)
        return EXIT_TIMEOUT
    if result.status == "died":
        print(f"error: kernel died: {err.evalue if err else ''}", file=sys.stderr)
        return EXIT_KERNEL_DIED
    print(f"error: the code raised {err.ename}: {err.evalue}" if err else "error: the code failed", file=sys.stderr)
    return EXIT_CELL_ERROR


def cmd_settings(args: argparse.Namespace) -> int:
    from dsagent.settings import SETTINGS, Settings

    settings = Settings()
    for s in SETTINGS:
        print(f"{s.env_var} = {settings[s.name]!r}   ({settings.source(s.name)})\n    {s.help}")
    return 0
