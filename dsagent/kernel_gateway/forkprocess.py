"""A kernel forked by the fork server's template, as jupyter_client sees it: ``ForkedProcess``, and the template's reply.

The kernel is the template's child, not ours: it is watched through a pidfd
(never a reused pid), and its exit code comes from the template, which reaps
it, on the connection of the fork request. The kernel itself says on that
connection when its ports are bound. Messages on it are one JSON object a line
(see ``forktemplate``).
"""

from __future__ import annotations

import asyncio
import json
import os
import select
import signal
import socket
import subprocess
import threading
from typing import Any

__all__ = ["EXIT_CODE_WAIT", "ForkedProcess", "UNKNOWN_EXIT", "fork_reply"]

#: how long a dead kernel's exit code may take to arrive from the template (it reaps at once)
EXIT_CODE_WAIT = 1.0
#: exit code reported when the template died before it could say how the kernel ended
UNKNOWN_EXIT = 255


class ForkedProcess:
    """What ``LocalProvisioner`` expects of a Popen, for a kernel forked by the template (not our child)."""

    stdin = stdout = stderr = None

    def __init__(self, pid: int, pidfd: int, conn: socket.socket, pending: bytes = b"", connection: dict[str, Any] | None = None) -> None:
        self.pid = pid
        self.connection = connection  # the template's spare: its sockets and key, for the manager to adopt
        self.returncode: int | None = None
        self._pidfd = pidfd  # names this process even after its pid is reused
        self._conn = conn  # the kernel says here when it has started, the template how it ended
        self._conn.settimeout(0.0)
        self._lock = threading.Lock()
        self._started = False
        self._exit: int | None = None  # the template's report, once read
        self._pending = b""  # an incomplete message
        self._take(pending)

    def poll(self) -> int | None:
        with self._lock:
            if self.returncode is None and select.select([self._pidfd], [], [], 0)[0]:
                self.returncode = self._exit_code()
            return self.returncode

    def _take(self, data: bytes) -> None:
        """Note the messages in ``data`` (one JSON object a line): ``started`` from the kernel, ``exit`` from the template."""
        *lines, self._pending = (self._pending + data).split(b"\n")
        for line in lines:
            try:
                message = json.loads(line)
            except ValueError:
                continue
            self._started = self._started or "started" in message
            if "exit" in message:
                self._exit = int(message["exit"])

    def _read(self) -> bool:
        """Take what the connection holds now, without blocking; False once nothing more will come."""
        with self._lock:
            if self._conn.fileno() < 0:
                return False
            try:
                data = self._conn.recv(4096)
            except BlockingIOError:
                return True
            except OSError:
                return False
            self._take(data)
            return bool(data) and self._exit is None

    async def started(self, timeout: float) -> bool:
        """Wait until the kernel has bound its sockets; False if it ended first or ``timeout`` passed.

        A client that connects before then is refused and zmq retries with a
        doubling interval: the last retry could come tens of ms after the
        kernel was ready.
        """
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while not self._started and self._read():
            if self._started:
                break
            readable = loop.create_future()
            watch = os.dup(self._conn.fileno())  # its own number: poll() may close the connection meanwhile
            loop.add_reader(watch, lambda: readable.done() or readable.set_result(None))
            try:
                await asyncio.wait_for(readable, max(0.0, end - loop.time()))
            except asyncio.TimeoutError:
                return False
            finally:
                loop.remove_reader(watch)
                os.close(watch)
        return self._started

    def _exit_code(self) -> int:
        try:
            self._conn.settimeout(EXIT_CODE_WAIT)
            while self._exit is None:
                data = self._conn.recv(4096)
                if not data:
                    break
                self._take(data)
        except OSError:
            pass  # the template died with the kernel's status
        self._conn.close()
        os.close(self._pidfd)
        return UNKNOWN_EXIT if self._exit is None else self._exit

    def wait(self, timeout: float | None = None) -> int:
        if self.poll() is None:
            if not select.select([self._pidfd], [], [], timeout)[0]:
                raise subprocess.TimeoutExpired(["forked kernel", str(self.pid)], timeout or 0)
        code = self.poll()
        assert code is not None
        return code

    async def exited(self) -> None:
        """Return once the process has ended (woken by its pidfd, not a polling interval)."""
        if self.poll() is not None:
            return
        loop = asyncio.get_running_loop()
        ended = loop.create_future()
        watch = os.dup(self._pidfd)  # its own number: poll() may close the pidfd meanwhile
        loop.add_reader(watch, lambda: ended.done() or ended.set_result(None))
        try:
            await ended
        finally:
            loop.remove_reader(watch)
            os.close(watch)

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            signal.pidfd_send_signal(self._pidfd, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def __del__(self) -> None:
        if self.returncode is None:
            try:
                os.close(self._pidfd)
                self._conn.close()
            except OSError:
                pass


def fork_reply(conn: socket.socket) -> tuple[dict[str, Any], list[int], bytes]:
    """The template's answer to a fork request, the pidfd it carries, and what came after it.

    One JSON object a line. A kernel that starts faster than its template
    answers (the template descheduled right after ``fork()``) may have said
    ``started`` first: such lines are kept for the ``ForkedProcess``.
    """
    received, pidfds = b"", []
    while True:
        data, fds, _, _ = socket.recv_fds(conn, 4096, 1)
        pidfds += fds
        if not data:
            return {"error": "the template closed the connection"}, pidfds, b""
        received += data
        *lines, rest = received.split(b"\n")
        for i, line in enumerate(lines):
            message = json.loads(line)
            if "pid" in message or "error" in message:
                return message, pidfds, b"".join(other + b"\n" for other in lines[:i] + lines[i + 1 :]) + rest
