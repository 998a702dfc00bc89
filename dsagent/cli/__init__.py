"""The ``dsagent`` command: parses arguments and calls the library.

Each command group lives in its own module with a ``register(subparsers)``
function. Only argparse and the stdlib are imported here, so ``dsagent
--help`` starts fast; a command imports what it needs when it runs.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import Sequence

__all__ = ["main", "build_parser", "skip_slow_optional_imports", "EXIT_OK", "EXIT_CELL_ERROR", "EXIT_USAGE", "EXIT_TIMEOUT", "EXIT_KERNEL_DIED"]

EXIT_OK = 0
EXIT_CELL_ERROR = 1  # the user's code raised
EXIT_USAGE = 2  # bad arguments or a DsagentError (the message says what to do)
EXIT_TIMEOUT = 3  # a cell ran past its timeout
EXIT_KERNEL_DIED = 4  # the kernel process ended mid-cell
EXIT_CANCELLED = 130  # SIGINT/SIGTERM

#: jsonschema's optional string-format checkers, never needed by dsagent (see skip_slow_optional_imports)
FORMAT_CHECKER_MODULES = ("rfc3987_syntax", "rfc3987", "rfc3986_validator", "rfc3339_validator", "uri_template", "isoduration", "webcolors", "fqdn")
#: modules that contribute commands, in the order --help lists them
COMMAND_MODULES = (
    "dsagent.cli.kernels", "dsagent.cli.artifacts", "dsagent.cli.notebooks", "dsagent.cli.batch", "dsagent.cli.schedules",
    "dsagent.cli.agents", "dsagent.cli.chat", "dsagent.cli.demo", "dsagent.cli.serve",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dsagent",
        description="dsagent: data-science agents that work in Jupyter kernels and keep every output.",
        epilog=f"exit codes: {EXIT_OK} ok, {EXIT_CELL_ERROR} code raised, {EXIT_USAGE} usage/setup error, "
        f"{EXIT_TIMEOUT} timeout, {EXIT_KERNEL_DIED} kernel died, {EXIT_CANCELLED} cancelled",
    )
    parser.add_argument("--version", action="version", version=_version())
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens (to stderr)")
    remote = parser.add_argument_group("remote kernels (the `jupyter` backend; same as DSAGENT_JUPYTER_URL/_TOKEN)")
    remote.add_argument("--jupyter-url", metavar="URL", help="Jupyter Server / Kernel Gateway URL (?token=... in it works too)")
    remote.add_argument("--jupyter-token", metavar="TOKEN", help="its token (prefer the env var: arguments show up in `ps`)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMAND_MODULES:
        importlib.import_module(module).register(sub)
    return parser


def _version() -> str:
    from dsagent import __version__

    return f"dsagent {__version__}"


def main(argv: Sequence[str] | None = None) -> int:
    skip_slow_optional_imports()
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    _apply_global_settings(args)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from dsagent.errors import DsagentError

    try:
        return int(args.func(args) or 0)
    except DsagentError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("cancelled", file=sys.stderr)
        return EXIT_CANCELLED
    except BrokenPipeError:  # `dsagent runs events 3 | head`: the reader has what it wanted
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes at exit
        return EXIT_OK


def skip_slow_optional_imports() -> None:
    """Keep optional imports that cost seconds and serve no command out of this process.

    jsonschema (imported by nbformat to validate notebooks) imports every
    string-format checker package that is installed; ``rfc3987_syntax`` alone
    compiles a grammar at import (~1.3 s, more than the rest of a ``dsagent
    run``), the others add ~0.2 s. No schema dsagent validates uses those
    formats (iri, uri, date-time, duration, uri-template, color, hostname), so
    their imports fail here as if the packages were absent, and jsonschema
    skips those checkers. Packages with other users (idna, jsonpointer) stay.
    """
    if "jsonschema" not in sys.modules:
        for name in FORMAT_CHECKER_MODULES:
            sys.modules.setdefault(name, None)  # type: ignore[assignment]


def _apply_global_settings(args: argparse.Namespace) -> None:
    """Global flags override their settings for this process (Settings reads DSAGENT_* from the environment)."""
    import os

    for flag, variable in (("jupyter_url", "DSAGENT_JUPYTER_URL"), ("jupyter_token", "DSAGENT_JUPYTER_TOKEN")):
        value = getattr(args, flag, None)
        if value is not None:
            os.environ[variable] = value


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
