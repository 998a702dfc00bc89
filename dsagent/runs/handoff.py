"""Handing a ``dsagent run`` to a ``dsagent serve`` on the same workspace: the advert file and the CLI's client.

A dashboard server writes ``<workspace>/serve.json`` (mode 0600): its pid, the
pid's start time, its port and a random token. ``dsagent run`` reads it before
any heavy import; if the server is alive it POSTs the run to the server's
token-protected loopback route (``panel_app/handoff.py``) and follows it: the
server runs the notebook on a warm kernel, the CLI prints the same progress,
output and exit code as a local run would. Ctrl-C (or SIGTERM) asks the server
to cancel the run. Anything that stops the hand-off before the server accepts
the run makes the CLI run it itself, saying so once on stderr.

Standard library only: this module is imported on every ``dsagent run``.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

__all__ = ["ADVERT_NAME", "Advert", "HandoffUnavailable", "HandoffLost", "write_advert", "remove_advert", "find_server", "HandoffClient"]

ADVERT_NAME = "serve.json"
#: seconds the CLI waits for the server to accept a run (it checks the notebook first)
ACCEPT_TIMEOUT = 60.0
#: how long one poll for news may be held open by the server
POLL_WAIT = 1.0


class HandoffUnavailable(Exception):
    """The server did not take the run (unreachable, refused, wrong token): the CLI runs it itself."""


class HandoffLost(Exception):
    """The server took the run, then could not be reached: the run goes on (or ended) there."""


@dataclass(frozen=True)
class Advert:
    """What a running ``dsagent serve`` tells CLI calls on its workspace."""

    pid: int
    started: str  # the pid's start time (field 22 of /proc/PID/stat): a reused pid does not match
    port: int
    token: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/handoff/"


def _start_time(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            data = handle.read()
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: count from the last ')'
    return data[data.rindex(b")") + 2 :].split()[19].decode()


def write_advert(home: Path, port: int) -> Advert:
    """Advertise this process's server in workspace ``home``; only this user may read the token."""
    pid = os.getpid()
    advert = Advert(pid, _start_time(pid) or "", port, secrets.token_urlsafe(32))
    path = home / ADVERT_NAME
    staging = home / f".{ADVERT_NAME}.{pid}"
    fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(advert.__dict__, handle)
    os.replace(staging, path)  # whole or not at all, for a CLI reading it now
    return advert


def remove_advert(home: Path, advert: Advert) -> None:
    """Remove the advert if it is still this server's (a second server may have replaced it)."""
    path = home / ADVERT_NAME
    try:
        if json.loads(path.read_text()).get("token") == advert.token:
            path.unlink()
    except (OSError, ValueError):
        pass


def find_server(home: Path) -> Advert | None:
    """The server advertised in ``home`` if its process is alive; None otherwise (a stale advert is ignored)."""
    try:
        data = json.loads((home / ADVERT_NAME).read_text())
        advert = Advert(int(data["pid"]), str(data["started"]), int(data["port"]), str(data["token"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if advert.pid == os.getpid() or _start_time(advert.pid) != advert.started:
        return None  # its process is gone (or the pid now names another one)
    return advert


class HandoffClient:
    """Talks to one advertised server: submit a run, follow it, cancel it."""

    def __init__(self, advert: Advert) -> None:
        self.advert = advert

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None, timeout: float = 10.0) -> dict[str, Any]:
        request = urllib.request.Request(
            self.advert.url + path, method=method, data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {self.advert.token}", "Content-Type": "application/json"},
        )  # fmt: skip
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never through a proxy
        try:
            with opener.open(request, timeout=timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            try:
                answer = json.loads(exc.read())
            except ValueError:
                answer = {"error": f"HTTP {exc.code}"}
            answer["status"] = exc.code
            return answer

    def submit(self, request: dict[str, Any]) -> dict[str, Any]:
        """POST the run; its first answer (``run_id``, or ``error``/``hint`` for bad input). Raises HandoffUnavailable."""
        try:
            answer = self._call("POST", "runs", request, timeout=ACCEPT_TIMEOUT)
        except (OSError, ValueError) as exc:
            raise HandoffUnavailable(str(getattr(exc, "reason", exc))) from None
        if "run_id" not in answer and answer.get("status") != 400:
            raise HandoffUnavailable(answer.get("error") or "no run id in the answer")
        return answer

    def follow(self, run_id: int, on_item: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        """Pass each progress item to ``on_item`` until the run ends; its outcome. Raises HandoffLost."""
        after = 0
        failures = 0
        while True:
            try:
                answer = self._call("GET", f"runs/{run_id}?after={after}&wait={POLL_WAIT}", timeout=POLL_WAIT + 30)
                failures = 0
            except (OSError, ValueError) as exc:
                failures += 1
                if failures >= 5:
                    raise HandoffLost(str(getattr(exc, "reason", exc))) from None
                time.sleep(0.2 * failures)
                continue
            if "error" in answer:
                raise HandoffLost(answer["error"])
            for item in answer["items"]:
                on_item(item)
            after = answer["next"]
            if answer.get("outcome") is not None:
                return answer["outcome"]

    def cancel(self, run_id: int) -> None:
        try:
            self._call("POST", f"runs/{run_id}/cancel", {})
        except (OSError, ValueError) as exc:
            raise HandoffLost(str(getattr(exc, "reason", exc))) from None


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
