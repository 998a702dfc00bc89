"""The ``jupyter`` backend: kernels on a remote Jupyter Server, Kernel Gateway or Enterprise Gateway.

A thin client of the documented API: REST for kernel lifecycle
(``remote_http``), the kernel websocket for messages (``remote_channels``),
and the contents API or the kernel itself for files (``remote_files``).
All protocol code for remote servers lives in these four modules.

A remote kernel can vanish under us: the server restarts it when it dies,
culls it when idle, or someone deletes it. ``execute`` therefore never waits
on the websocket alone: it watches for the server's ``restarting``/``dead``
status messages, asks ``GET /api/kernels/{id}`` whenever the socket is quiet,
and reconnects a dropped socket (the server replays what it buffered).
"""

from __future__ import annotations

import ast
import asyncio
import atexit
import logging
import posixpath
import uuid
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dsagent.errors import BackendUnavailable, KernelDied, KernelServerError, KernelStartFailed, SessionClosed
from dsagent.kernel_gateway.base import KernelBackend, KernelSession, OutputHook
from dsagent.kernel_gateway.execute_loop import KernelGone, KernelLink, restarting, run_cell
from dsagent.kernel_gateway.kernel_env import drop_secrets_code
from dsagent.kernel_gateway.models import Execution, FileInfo
from dsagent.kernel_gateway.remote_channels import ChannelClosed, KernelChannel
from dsagent.kernel_gateway.remote_files import ContentsFiles, KernelFiles, RemoteFiles, clean_path
from dsagent.kernel_gateway.remote_http import KernelServerClient, ServerAddress, delete_kernel_now, mask_token, probe
from dsagent.settings import Settings

__all__ = ["JupyterBackend", "JupyterSession"]

log = logging.getLogger(__name__)

#: seconds of websocket silence after which the server is asked whether the kernel still exists
ALIVE_POLL_SECONDS = 1.0
#: seconds the server may take to open a kernel websocket (it waits for the kernel's kernel_info first)
WS_OPEN_TIMEOUT = 20.0
#: pauses between attempts to reopen a dropped websocket
RECONNECT_DELAYS = (0.0, 0.2, 0.5, 1.0, 2.0, 4.0)
NO_URL = (
    "no server configured: set jupyter_url (DSAGENT_JUPYTER_URL) to the URL of a Jupyter Server, "
    "Kernel Gateway or Enterprise Gateway, and jupyter_token (DSAGENT_JUPYTER_TOKEN) to its token"
)
_LIVE_KERNELS: dict[str, ServerAddress] = {}  # kernel id -> server, deleted at interpreter exit


@atexit.register
def _delete_leftover_kernels() -> None:
    for kernel_id, address in list(_LIVE_KERNELS.items()):
        delete_kernel_now(address, kernel_id)


GONE = "the server no longer has this kernel (it was shut down or culled)"


def _gone_reason(model: dict[str, Any] | None) -> str:
    """Why a kernel is gone, from the server's record of it ("" while it is there)."""
    if model is None:
        return GONE
    if model.get("execution_state") == "dead":
        return "the server reports the kernel dead"
    return ""


class JupyterBackend(KernelBackend):
    """Kernels on the server at ``url`` (default: the ``jupyter_url`` setting)."""

    name = "jupyter"
    unsupported = {
        "external_kill": "the kernel runs on the server's machine, so this process cannot kill it by pid "
        "(a kernel killed from inside a cell, or deleted on the server, is checked instead)",
        "surrogate_text": "Jupyter servers drop an output message whose text holds lone surrogates "
        "(they cannot encode it for the websocket); the cell still succeeds, that output is lost",
        "ipython_history": "the server starts the kernel with its own IPython configuration, so history goes to "
        "the server's history.sqlite (session numbers and %history -g show earlier sessions) unless its kernelspec "
        "passes --HistoryManager.hist_file=:memory:",
        "death_recovery": "the server starts the kernel on its machine with its own command line, so no copy of its "
        "output is kept where this client could read it; what a dying kernel never sent is lost",
        "death_reason": "a Jupyter server reports only that the kernel is dead or restarting, not the signal, "
        "exit code or memory of its end",
    }

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        url: str | None = None,
        token: str | None = None,
        kernel_name: str | None = None,
        sessions_dir: str = "dsagent-sessions",
        **options: Any,
    ) -> None:
        super().__init__(settings, **options)
        self.address = ServerAddress.parse(
            self.settings.jupyter_url if url is None else url, self.settings.jupyter_token if token is None else token
        )
        self.kernel_name = self.settings.jupyter_kernel_name if kernel_name is None else kernel_name
        #: where sessions without a work dir get one, relative to the server's root dir
        self.sessions_dir = sessions_dir
        self._client: KernelServerClient | None = None
        self._sessions: weakref.WeakSet[JupyterSession] = weakref.WeakSet()

    @classmethod
    def check(cls) -> str | None:
        settings = Settings()
        if not settings.jupyter_url:
            return NO_URL
        return probe(ServerAddress.parse(settings.jupyter_url, settings.jupyter_token))

    def describe(self) -> dict[str, Any]:
        return {
            "url": self.address.url or "(not set: DSAGENT_JUPYTER_URL)",
            "token": mask_token(self.address.token),
            "kernel_name": self.kernel_name or "(the server's default)",
            "sessions_dir": f"{self.sessions_dir}/ under the server's root dir",
        }

    @property
    def client(self) -> KernelServerClient:
        if self._client is None:
            self._client = KernelServerClient(self.address)
        return self._client

    async def start_session(self, *, work_dir: str | Path | None = None, env: Mapping[str, str] | None = None) -> JupyterSession:
        """A new kernel on the server; ``work_dir`` is a path on the server (relative: to its root dir)."""
        if not self.address.url:
            raise BackendUnavailable(f"the jupyter backend has {NO_URL}", hint="or pass url=... to JupyterBackend", name="jupyter", reason="no url")
        folder = str(work_dir) if work_dir else posixpath.join(self.sessions_dir, uuid.uuid4().hex[:12])
        for attempt in range(2):
            kernel_id = await self.client.start_kernel(self.kernel_name, self.settings.kernel_start_timeout)
            _LIVE_KERNELS[kernel_id] = self.address
            session = JupyterSession(self, kernel_id, folder, env)
            try:
                await session._open()
            except ChannelClosed as exc:
                # e.g. the kernel lost a race for its ports and the server's restart of it never
                # reached the websocket: a fresh kernel is the quickest way out
                await session.shutdown()
                if attempt:
                    raise KernelStartFailed(
                        f"kernels started on {self.address.url} do not answer on their websocket: {exc}",
                        hint="check the server's log for kernels that fail to start",
                        kernel_name=self.kernel_name,
                        reason=str(exc),
                    ) from exc
                log.warning("kernel %s on %s did not answer (%s); starting another", kernel_id, self.address.url, exc)
                continue
            except BaseException:
                await session.shutdown()
                raise
            self._sessions.add(session)
            return session
        raise AssertionError("unreachable")  # pragma: no cover

    async def aclose(self) -> None:
        """Shut down the kernels of sessions still open, then the HTTP client."""
        for session in list(self._sessions):
            await session.shutdown()
        if self._client is not None:
            await self._client.aclose()
            self._client = None


class JupyterSession(KernelSession):
    """One kernel on a remote server and its work dir there."""

    backend_name = "jupyter"

    def __init__(self, backend: JupyterBackend, kernel_id: str, folder: str, env: Mapping[str, str] | None) -> None:
        self._backend = backend
        self._client = backend.client
        self.kernel_id = kernel_id
        self._channel = KernelChannel(backend.address, kernel_id, open_timeout=min(WS_OPEN_TIMEOUT, backend.settings.kernel_start_timeout))
        self._folder = folder  # as asked for; absolute, or relative to the server's root dir
        self._env = dict(env or {})
        self._work_dir = ""  # absolute, as the kernel sees it; known after the first set-up
        self._files: RemoteFiles | None = None
        self._kernel_files: KernelFiles | None = None
        self._lock = asyncio.Lock()
        self._closed = False
        self._dead = False
        self._abandoned = ""  # msg_id of a cell whose caller was cancelled
        self._link = _RemoteLink(self)

    @property
    def work_dir(self) -> str:
        return self._work_dir

    @property
    def settings(self) -> Settings:
        return self._backend.settings

    @property
    def url(self) -> str:
        return self._backend.address.url

    def _check_usable(self) -> None:
        if self._closed:
            raise SessionClosed("this kernel session was shut down", hint="start a new session")
        if self._dead:
            raise KernelDied(
                f"the kernel of this session on {self.url} has died", hint="call restart() (state is lost)", kernel_name=self._backend.kernel_name, outputs=[]
            )

    # -- set-up ---------------------------------------------------------------

    async def _open(self) -> None:
        await self._channel.connect()
        contents: ContentsFiles | None = None
        if not posixpath.isabs(self._folder) and await self._client.has_contents():
            contents = ContentsFiles(self._client, clean_path(self._folder))
            await contents.ensure_dir()
        await self._setup()
        self._kernel_files = KernelFiles(self._evaluate, self._work_dir)
        self._files = contents or self._kernel_files

    async def _setup(self) -> None:
        """Create the work dir, move the kernel into it and set its environment (one silent request)."""
        folder = self._work_dir or self._folder
        code = (
            "import os as _dsagent_os\n"
            f"_dsagent_os.makedirs({folder!r}, exist_ok=True)\n"
            f"_dsagent_os.chdir({folder!r})\n"
            # the server's environment is the other machine's: its secrets stay out of code that runs here too
            + drop_secrets_code(self.settings.kernel_env_passthrough, keep=self._env)
            + (f"_dsagent_os.environ.update({self._env!r})\n" if self._env else "")
            + "del _dsagent_os\n"
        )
        reply = await self._silent(code, {"cwd": "__import__('os').getcwd()"})
        cwd = reply.get("user_expressions", {}).get("cwd", {})
        if reply.get("status") != "ok" or cwd.get("status") != "ok":
            raise KernelStartFailed(
                f"could not move the kernel on {self.url} into its work dir {folder!r}: {reply.get('ename', '')} {reply.get('evalue', '')}".rstrip(),
                hint="pass a work dir the server's kernels can create and write",
                kernel_name=self._backend.kernel_name,
                reason=str(reply.get("evalue", "")),
            )
        self._work_dir = ast.literal_eval(cwd["data"]["text/plain"])

    # -- silent requests (set-up, kernel-side files) ----------------------------

    async def _evaluate(self, expression: str) -> dict[str, Any]:
        """Evaluate one expression silently in the kernel; its ``user_expressions`` entry."""
        async with self._lock:
            self._check_usable()
            reply = await self._silent("", {"value": expression})
        return reply.get("user_expressions", {}).get("value", {"status": "error", "ename": reply.get("ename", ""), "evalue": reply.get("evalue", "")})

    async def _silent(self, code: str, user_expressions: dict[str, str]) -> dict[str, Any]:
        """Run ``code`` without output, history or a new execution count; the reply's content."""
        content = {"code": code, "silent": True, "store_history": False, "user_expressions": user_expressions, "allow_stdin": False, "stop_on_error": False}
        timeout = self.settings.kernel_start_timeout
        for attempt in range(2):
            try:
                await self._ensure_connected()
                self._channel.drain()
                msg_id = await self._channel.send("shell", "execute_request", content)
                reply = await self._reply(msg_id, "execute_reply", timeout)
            except ChannelClosed:
                continue  # reconnect and ask again: these requests are safe to repeat
            if reply is None:
                break
            return reply["content"]
        raise KernelDied(
            f"the kernel on {self.url} did not answer within {timeout:g}s",
            hint="check the server's log; restart() or start a new session",
            kernel_name=self._backend.kernel_name,
            outputs=[],
        )

    async def _reply(self, msg_id: str, msg_type: str, timeout: float) -> dict[str, Any] | None:
        """The reply to ``msg_id``, or None after ``timeout`` seconds or if the kernel went away."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while loop.time() < end:
            msg = await self._channel.receive(min(ALIVE_POLL_SECONDS, end - loop.time()))
            if msg is None:
                if await self._client.kernel_model(self.kernel_id) is None:
                    return None
                continue
            if msg["msg_type"] == msg_type and msg["parent_header"].get("msg_id") == msg_id:
                return msg
            if msg["msg_type"] == "shutdown_reply" or (
                msg["msg_type"] == "status" and msg["content"].get("execution_state") in ("restarting", "dead")
            ):
                return None  # the kernel is going away: no reply is coming
        return None

    async def _ensure_connected(self) -> None:
        if not self._channel.connected and not await self._reconnect():
            self._dead = True
            self._check_usable()

    async def _reconnect(self) -> bool:
        """Reopen a dropped websocket; False when the server no longer has the kernel."""
        error: Exception | None = None
        for delay in RECONNECT_DELAYS:
            await asyncio.sleep(delay)
            try:
                if await self._client.kernel_model(self.kernel_id) is None:
                    return False
                await self._channel.connect()
                return True
            except (ChannelClosed, KernelServerError) as exc:
                error = exc
                log.info("reconnecting to kernel %s on %s failed: %s", self.kernel_id, self.url, exc)
        if isinstance(error, KernelServerError):
            raise error
        raise KernelServerError(
            f"lost the websocket to kernel {self.kernel_id} on {self.url} and could not reopen it: {error}",
            hint="check the server and the network; restart() or start a new session",
            name="jupyter",
            reason="websocket lost",
            url=self.url,
            status=None,
        )

    # -- execution -------------------------------------------------------------

    async def execute(self, code: str, *, timeout: float | None = None, on_output: OutputHook | None = None) -> Execution:
        async with self._lock:
            self._check_usable()
            timeout = self.settings.execution_timeout if timeout is None else timeout
            result = await run_cell(
                self._link, code, timeout=timeout, grace=self.settings.interrupt_grace, max_output_bytes=self.settings.max_output_bytes, on_output=on_output
            )
            if result.status == "died":
                self._dead = True
            return result

    async def _settle(self, msg_id: str) -> None:
        """Wait (bounded) for an abandoned, interrupted cell to end, so the kernel does not abort the next one."""
        self._abandoned = ""
        loop = asyncio.get_running_loop()
        end = loop.time() + self.settings.interrupt_grace
        while loop.time() < end:
            try:
                msg = await self._channel.receive(end - loop.time())
            except ChannelClosed:
                return
            if msg is None or (
                msg["msg_type"] == "status" and msg["content"].get("execution_state") == "idle" and msg["parent_header"].get("msg_id") == msg_id
            ):
                return

    # -- lifecycle -------------------------------------------------------------

    async def interrupt(self) -> None:
        self._check_usable()
        await self._client.interrupt(self.kernel_id)

    async def restart(self) -> None:
        if self._closed:
            raise SessionClosed("this kernel session was shut down", hint="start a new session")
        async with restarting(self._lock, self._link):
            await self._restart_kernel()

    async def _restart_kernel(self) -> None:
        """Replace the kernel with a fresh one in the same work dir (state is lost, as with any restart).

        Not the server's own ``POST .../restart``: after it, Kernel Gateway's kernel
        websocket sometimes stays silent for good, and on a loaded machine Jupyter
        Server's restart took longer than starting a new kernel. A new kernel, a new
        websocket and the same set-up is what a caller sees as a restart anyway.
        """
        old_id, old_channel = self.kernel_id, self._channel
        self._dead = True  # until the new kernel is set up: a failure below leaves the session dead
        old_channel.abort()
        try:
            await self._client.delete(old_id)
        except KernelServerError as exc:
            log.warning("could not delete kernel %s on %s (%s); the server will keep it until it is culled", old_id, self.url, exc)
        _LIVE_KERNELS.pop(old_id, None)
        self.kernel_id = await self._client.start_kernel(self._backend.kernel_name, self.settings.kernel_start_timeout)
        _LIVE_KERNELS[self.kernel_id] = self._backend.address
        self._channel = KernelChannel(self._backend.address, self.kernel_id, open_timeout=old_channel.open_timeout)
        self._abandoned = ""
        await self._channel.connect()
        self._dead = False
        await self._setup()

    async def is_alive(self) -> bool:
        return not self._closed and not _gone_reason(await self._client.kernel_model(self.kernel_id))

    async def shutdown(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._backend._sessions.discard(self)
        try:
            await self._channel.close()
            await self._client.delete(self.kernel_id)
        except asyncio.CancelledError:
            self._channel.abort()
            delete_kernel_now(self._backend.address, self.kernel_id)
            raise
        except KernelServerError as exc:
            log.warning("could not delete kernel %s on %s (%s); the server will keep it until it is culled", self.kernel_id, self.url, exc)
        finally:
            _LIVE_KERNELS.pop(self.kernel_id, None)

    # -- files -----------------------------------------------------------------

    def _file_access(self, path: str = "") -> RemoteFiles:
        if self._closed or self._files is None or self._kernel_files is None:
            raise SessionClosed("this kernel session was shut down", hint="start a new session")
        if any(part.startswith(".") for part in clean_path(path).split("/")):
            return self._kernel_files  # the contents API refuses dot-files
        return self._files

    async def upload(self, path: str, data: bytes) -> None:
        await self._file_access(path).upload(path, data)

    async def download(self, path: str) -> bytes:
        return await self._file_access(path).download(path)

    async def list_files(self, path: str = ".", *, recursive: bool = False) -> list[FileInfo]:
        return await self._file_access().list_files(path, recursive=recursive)


class _RemoteLink(KernelLink):
    """The execute loop's view of a remote kernel: the websocket, reopened when it drops; liveness from the server."""

    poll_seconds = ALIVE_POLL_SECONDS

    def __init__(self, session: JupyterSession) -> None:
        super().__init__()
        self._session = session
        self._msg_id = ""
        self._content: dict[str, Any] = {}
        self._seen = False  # a message of this cell arrived
        self._reconnected = False  # the socket was reopened since the last probe

    async def send(self, code: str) -> None:
        session = self._session
        await session._ensure_connected()
        if session._abandoned:
            await session._settle(session._abandoned)
        session._channel.drain()
        self._content = {"code": code, "silent": False, "store_history": True, "user_expressions": {}, "allow_stdin": False, "stop_on_error": True}
        self._seen = self._reconnected = False
        try:
            self._msg_id = await session._channel.send("shell", "execute_request", self._content)
        except ChannelClosed:
            await session._ensure_connected()
            self._msg_id = await session._channel.send("shell", "execute_request", self._content)

    async def receive(self, wait: float) -> dict[str, Any] | None:
        session = self._session
        loop = asyncio.get_running_loop()
        end = loop.time() + wait
        while True:
            try:
                msg = await session._channel.receive(max(0.0, end - loop.time()))
            except ChannelClosed:
                if not await session._reconnect():
                    raise KernelGone(GONE) from None
                self._reconnected = True
                continue
            if msg is None:
                return None
            if msg["msg_type"] == "status" and msg["content"].get("execution_state") in ("restarting", "dead"):
                # sent by the server itself (no parent) when it finds the kernel dead
                state = msg["content"]["execution_state"]
                raise KernelGone("the kernel died and the server restarted it" if state == "restarting" else "the kernel died")
            if msg["msg_type"] == "shutdown_reply":
                # the server asked the kernel to stop (DELETE, culling, or a restart by another client);
                # the cell's last messages may still follow, but its state is gone either way
                raise KernelGone("the kernel was restarted on the server" if msg["content"].get("restart") else GONE)
            if msg["parent_header"].get("msg_id") == self._msg_id:
                self._seen = True
                return msg

    async def probe(self) -> str:
        session = self._session
        model = await session._client.kernel_model(session.kernel_id)
        gone = _gone_reason(model)
        if gone:
            return gone
        if self._reconnected and not self._seen and model and model.get("execution_state") == "idle":
            # nothing of ours was replayed and the kernel is idle: the request died with the old socket
            self._msg_id = await session._channel.send("shell", "execute_request", self._content)
        self._reconnected = False
        return ""

    async def interrupt(self) -> None:
        await self._session._client.interrupt(self._session.kernel_id)

    async def restart(self) -> None:
        await self._session._restart_kernel()

    async def reply(self, timeout: float) -> dict[str, Any] | None:
        return await self._session._reply(self._msg_id, "execute_reply", timeout)

    async def abandon(self) -> None:
        session = self._session
        if not session._closed:
            session._abandoned = self._msg_id
            await session._client.interrupt(session.kernel_id)
