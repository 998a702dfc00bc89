"""``dsagent serve``: the dashboard (runs, artifacts, a REST API) in a browser; ``make serve`` runs it.

On an empty workspace it fills it in the background with the demo (``dsagent
demo`` in a child process: a notebook run and the analysis agent with a
scripted model), so the first page shows real runs; ``--no-demo`` skips that.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from pathlib import Path

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="the dashboard: runs, artifacts and a REST API in the browser (http://127.0.0.1:5006)")
    p.add_argument("--port", type=int, default=5006, help="port to listen on (default 5006)")
    p.add_argument("--address", default="127.0.0.1", help="address to bind (default 127.0.0.1; 0.0.0.0 needs --basic-auth)")
    p.add_argument("--workspace", metavar="DIR", help="workspace folder (default: DSAGENT_HOME or ./.dsagent); must exist when named")
    p.add_argument("--basic-auth", metavar="FILE", help="JSON file of user name to password (plain or hashed); turns the login on")
    p.add_argument("--add-user", metavar="NAME", help="write NAME with a hashed password (asked for) into the --basic-auth file, then exit")
    p.add_argument("--add-token", metavar="NAME",
                   help="make an API token for scripts (REST routes, sent as 'Authorization: Bearer TOKEN'), print it once, then exit")
    p.add_argument("--revoke-token", metavar="NAME", help="revoke the API token NAME (a running server refuses it at once), then exit")
    p.add_argument("--list-tokens", action="store_true", help="list the workspace's API tokens (names and dates, never the tokens), then exit")
    p.add_argument("--cookie-secret-file", metavar="FILE",
                   help="file holding the secret that signs login cookies (default: DSAGENT_DASHBOARD_COOKIE_SECRET, else one kept "
                        "in <workspace>/dashboard-cookie-secret)")
    # kept only to explain itself: a secret on the command line is in `ps` and /proc/<pid>/cmdline for every local user
    p.add_argument("--cookie-secret", metavar="S", help=argparse.SUPPRESS)
    p.add_argument("--allow-websocket-origin", action="append", default=[], metavar="HOST:PORT",
                   help="another origin the pages may be opened from (a proxy's name); repeatable")
    p.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                   help="another name the server may be reached by (a proxy's or a DNS name); repeatable. Requests "
                        "under any other name are refused (DNS rebinding)")
    p.add_argument("--no-demo", action="store_true", help="do not fill an empty workspace with the demo runs")
    p.add_argument("--no-scheduler", action="store_true",
                   help="do not fire the workspace's schedules from this process (run `dsagent scheduler` instead)")
    p.add_argument("--insecure-no-auth", action="store_true", help="allow a non-loopback --address without auth (anyone who reaches it sees everything)")
    p.set_defaults(func=cmd_serve)


def _add_user(args: argparse.Namespace) -> int:
    import getpass

    from dsagent.errors import DsagentError
    from dsagent.panel_app.auth import add_user

    if not args.basic_auth:
        raise DsagentError("--add-user needs --basic-auth FILE (the file to write)", hint="dsagent serve --basic-auth users.json --add-user alice")
    password = os.environ.get("DSAGENT_NEW_PASSWORD") or getpass.getpass(f"password for {args.add_user}: ")
    if not password:
        raise DsagentError("an empty password is not allowed", hint="type a password (or set DSAGENT_NEW_PASSWORD)")
    add_user(args.basic_auth, args.add_user, password)
    print(f"{args.add_user} written to {args.basic_auth} (hashed)")
    return 0


def _tokens(args: argparse.Namespace) -> int:
    from datetime import datetime

    from dsagent.panel_app.api_tokens import ApiTokens
    from dsagent.workspace import Workspace

    workspace = Workspace.from_settings(_workspace_settings(args))
    workspace.ensure()
    tokens = ApiTokens(workspace.home)
    if args.add_token:
        token = tokens.add(args.add_token)
        print(f"API token {args.add_token} (shown only now; only its hash is kept in {tokens.path}):\n{token}\n"
              f"use: curl -H 'Authorization: Bearer {token}' http://127.0.0.1:5006/api/runs  (needs a server with --basic-auth)")
    elif args.revoke_token:
        tokens.revoke(args.revoke_token)
        print(f"API token {args.revoke_token} revoked")
    else:
        listing = tokens.listing()
        for name, created in listing:
            print(f"{name}\tcreated {datetime.fromtimestamp(created):%Y-%m-%d %H:%M}")
        if not listing:
            print("no API tokens (dsagent serve --add-token NAME makes one)")
    return 0


def _workspace_settings(args: argparse.Namespace):
    from dsagent.errors import WorkspaceError
    from dsagent.settings import Settings

    named = args.workspace or os.environ.get("DSAGENT_HOME")
    if named and not Path(named).expanduser().is_dir():
        raise WorkspaceError(f"the workspace {named} does not exist",
                             hint="create it (mkdir), or leave out --workspace/DSAGENT_HOME to use ./.dsagent")
    if args.workspace:
        os.environ["DSAGENT_HOME"] = str(Path(args.workspace).expanduser().resolve())
    return Settings()


def _secret_from_file(path: str | None) -> str | None:
    from dsagent.errors import DsagentError

    if path is None:
        return None
    try:
        secret = Path(path).expanduser().read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise DsagentError(f"cannot read the cookie secret file {path}: {exc.strerror or exc}", hint="check the path and its permissions") from None
    if len(secret) < 16:
        raise DsagentError(f"the cookie secret in {path} is too short ({len(secret)} characters)",
                           hint="use 32 random characters or more, e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))' > FILE")
    return secret


def cmd_serve(args: argparse.Namespace) -> int:
    from dsagent.errors import DsagentError

    if args.add_user:
        return _add_user(args)
    if args.add_token or args.revoke_token or args.list_tokens:
        return _tokens(args)
    if args.cookie_secret is not None:
        raise DsagentError("--cookie-secret is no longer accepted: a secret on the command line can be read by every user and "
                           "every process of this machine (ps, /proc/<pid>/cmdline)",
                           hint="put it in a file only you can read and pass --cookie-secret-file FILE, or set "
                                "DSAGENT_DASHBOARD_COOKIE_SECRET; without either, one is generated and kept in the workspace")
    loopback = args.address in ("127.0.0.1", "localhost", "::1")
    if not loopback and not args.basic_auth and not args.insecure_no_auth:
        raise DsagentError(f"refusing to serve on {args.address} without a login: anyone who reaches it could read every run",
                           hint="turn auth on: dsagent serve --basic-auth users.json --add-user NAME, then --basic-auth users.json "
                                "(or pass --insecure-no-auth if the network is yours alone)")
    from dsagent.panel_app.app import build_server, origins_for
    from dsagent.panel_app.auth import Credentials, cookie_secret
    from dsagent.panel_app.context import AppContext

    settings = _workspace_settings(args)
    credentials = Credentials(args.basic_auth) if args.basic_auth else None
    ctx = AppContext.create(settings, credentials)  # creates/upgrades the store; SchemaTooNew says why it refuses
    if not args.no_scheduler:
        from dsagent.panel_app.scheduler_thread import DashboardScheduler

        ctx.scheduler = DashboardScheduler(settings)
    secret = cookie_secret(_secret_from_file(args.cookie_secret_file), ctx.home)
    server = build_server(ctx, port=args.port, address=args.address, cookie_secret=secret,
                          websocket_origins=origins_for(args.address, args.port) + args.allow_websocket_origin,
                          allowed_hosts=args.allowed_host)
    demo = None
    if not args.no_demo and ctx.store.counts()["runs"] == 0:
        demo = _start_demo(ctx.home)
    host = "127.0.0.1" if args.address in ("0.0.0.0", "") else args.address
    print(f"dsagent dashboard on http://{host}:{server.port}/  (workspace {ctx.home}; Ctrl-C stops)", flush=True)
    if credentials is not None:
        print(f"login required (users in {args.basic_auth})", flush=True)
    if ctx.scheduler is not None:
        ctx.scheduler.start()  # its own thread and loop: firings never run on the pages' event loop
        print(f"firing the workspace's schedules in this process ({ctx.scheduler.owner}; --no-scheduler turns it off)", flush=True)
    if demo is not None:
        print(f"the workspace is empty: filling it with the demo in the background (log: {ctx.home / 'demo.log'})", flush=True)
    from dsagent.panel_app.handoff import HandoffService

    handoff = HandoffService.for_context(ctx)
    handoff.advertise(server.port)  # `dsagent run` on this workspace hands its runs to us (runs/handoff.py)
    signal.signal(signal.SIGTERM, lambda *_: server.io_loop.asyncio_loop.call_soon_threadsafe(server.io_loop.stop))
    try:
        server.start()
        server.io_loop.start()  # Panel's SIGINT handler stops the loop (Ctrl-C)
    except KeyboardInterrupt:
        pass
    finally:
        print("stopping the dashboard ...", file=sys.stderr, flush=True)
        handoff.withdraw()
        _close_handoff(server, handoff)
        if demo is not None:
            _stop_demo(demo)
        if ctx.scheduler is not None:  # running firings end cancelled, their kernels down, the lease given back
            ctx.scheduler.stop()
        server.stop()
        ctx.close()
    # everything is written and closed; skip the interpreter's teardown of Panel, Bokeh, pandas and DuckDB,
    # which took seconds on a busy machine after Ctrl-C
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _close_handoff(server, handoff) -> None:
    """Cancel handed-off runs still going (recorded ``cancelled``) and stop their kernels, on the stopped loop."""
    import asyncio

    loop = server.io_loop.asyncio_loop
    try:
        loop.run_until_complete(asyncio.wait_for(handoff.aclose(), 30))
    except Exception as exc:  # the process exits next; its kernels end with it
        print(f"stopping handed-off runs: {exc}", file=sys.stderr, flush=True)


def _start_demo(home: Path) -> subprocess.Popen:
    log = open(home / "demo.log", "ab")
    env = {**os.environ, "DSAGENT_HOME": str(home)}
    # its own process (and process group): its kernels and the store's lock are its business; a Ctrl-C in
    # the terminal reaches it too, and _stop_demo sends SIGINT so it shuts its kernels down cleanly
    return subprocess.Popen([sys.executable, "-m", "dsagent", "demo"], env=env, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)


def _stop_demo(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGINT)
    try:
        process.wait(20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
