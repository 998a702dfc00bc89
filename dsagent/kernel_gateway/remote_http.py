"""REST side of the ``jupyter`` backend: the documented Jupyter Server API over httpx.

Covers what every Jupyter Server, Kernel Gateway and Enterprise Gateway has
(``/api``, ``/api/kernelspecs``, ``/api/kernels``) and turns transport and
HTTP failures into ``KernelServerError``s that name the URL and what to do.
"""

from __future__ import annotations

import asyncio

import urllib.parse
from dataclasses import dataclass
from typing import Any

import httpx

from dsagent.errors import KernelServerError, KernelStartFailed

__all__ = ["KernelServerClient", "ServerAddress", "mask_token"]

#: seconds one REST call may take (kernel starts have their own, longer limit)
REQUEST_TIMEOUT = 30.0


def mask_token(token: str) -> str:
    """What ``describe()`` shows for a token: whether one is set, never its value."""
    return "set (masked)" if token else "(none)"


@dataclass(frozen=True)
class ServerAddress:
    """A server's base URL (with any base path) and token."""

    url: str
    token: str = ""

    @classmethod
    def parse(cls, url: str, token: str = "") -> ServerAddress:
        """Accept the URL a server prints (``http://host:8888/?token=abc``) as well as a bare one."""
        parts = urllib.parse.urlsplit(url.strip())
        query = urllib.parse.parse_qs(parts.query)
        token = token or (query.get("token") or [""])[0]
        base = urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))
        return cls(base, token)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"token {self.token}"} if self.token else {}

    def api(self, path: str) -> str:
        return f"{self.url}/api/{path.lstrip('/')}"

    def ws(self, path: str) -> str:
        scheme = "wss" if self.url.startswith("https") else "ws"
        return scheme + self.api(path)[self.url.index(":") :]


def refused(address: ServerAddress, status: int, what: str) -> KernelServerError:
    """The error for a 401/403: the token is wrong or missing."""
    return KernelServerError(
        f"the Jupyter server at {address.url} refused {what} (HTTP {status}): the token is "
        + ("wrong" if address.token else "missing"),
        hint="set jupyter_token (DSAGENT_JUPYTER_TOKEN) to the server's token, or put it in the URL as ?token=...",
        name="jupyter",
        reason="bad token",
        url=address.url,
        status=status,
    )


def unreachable(address: ServerAddress, exc: BaseException) -> KernelServerError:
    return KernelServerError(
        f"cannot reach the Jupyter server at {address.url}: {exc or type(exc).__name__}",
        hint="check that the server is running and that jupyter_url (DSAGENT_JUPYTER_URL) points at it",
        name="jupyter",
        reason="unreachable",
        url=address.url,
        status=None,
    )


class KernelServerClient:
    """Async REST calls to one server; every failure is a ``KernelServerError``."""

    def __init__(self, address: ServerAddress, timeout: float = REQUEST_TIMEOUT) -> None:
        self.address = address
        self._http = httpx.AsyncClient(headers=address.headers, timeout=timeout)
        self._has_contents: bool | None = None

    async def aclose(self) -> None:
        await self._http.aclose()

    async def request(self, method: str, path: str, *, ok_missing: bool = False, timeout: float | None = None, **kwargs: Any) -> httpx.Response:
        """One call; a 404 is returned (not raised) when ``ok_missing``."""
        url = self.address.api(path)
        what = f"{method} /api/{path}"
        extra = {"timeout": timeout} if timeout is not None else {}
        try:
            response = await self._http.request(method, url, **extra, **kwargs)
        except httpx.TimeoutException as exc:
            raise KernelServerError(
                f"the Jupyter server at {self.address.url} did not answer {what} in time",
                hint="the server may be overloaded; check its log, or try again",
                name="jupyter",
                reason="timeout",
                url=self.address.url,
                status=None,
            ) from exc
        except httpx.TransportError as exc:
            raise unreachable(self.address, exc) from exc
        if response.status_code in (401, 403):
            raise refused(self.address, response.status_code, what)
        if response.status_code == 404 and ok_missing:
            return response
        if response.status_code >= 400:
            raise KernelServerError(
                f"the Jupyter server at {self.address.url} answered {what} with HTTP "
                f"{response.status_code}: {_server_message(response)}",
                hint="check the server's log",
                name="jupyter",
                reason=f"HTTP {response.status_code}",
                url=self.address.url,
                status=response.status_code,
            )
        return response

    async def kernelspecs(self) -> tuple[str, list[str]]:
        """The server's default kernelspec and all it offers."""
        data = (await self.request("GET", "kernelspecs")).json()
        return data.get("default", ""), sorted(data.get("kernelspecs", {}))

    async def start_kernel(self, kernel_name: str, timeout: float) -> str:
        """Start a kernel in the server's root dir (path ""); its id."""
        default, names = await self.kernelspecs()
        name = kernel_name or default
        if name not in names:
            raise KernelStartFailed(
                f"the Jupyter server at {self.address.url} has no kernelspec named {name!r}; it offers: {', '.join(names) or '(none)'}",
                hint="set jupyter_kernel_name (DSAGENT_JUPYTER_KERNEL_NAME) to one of those",
                kernel_name=name,
                reason="no such kernelspec",
            )
        response = await self.request("POST", "kernels", json={"name": name, "path": ""}, timeout=timeout)
        return str(response.json()["id"])

    async def kernel_model(self, kernel_id: str) -> dict[str, Any] | None:
        """The server's record of a kernel, or None when it is gone (shut down or culled)."""
        response = await self.request("GET", f"kernels/{kernel_id}", ok_missing=True)
        return None if response.status_code == 404 else response.json()

    async def interrupt(self, kernel_id: str) -> None:
        await self.request("POST", f"kernels/{kernel_id}/interrupt", ok_missing=True)

    async def delete(self, kernel_id: str, *, busy_for: float = 5.0) -> None:
        """DELETE a kernel; a 5xx is retried for up to ``busy_for`` seconds.

        A kernel that just died is being restarted by the server's own restarter, and
        Jupyter Server / Kernel Gateway answer a DELETE meanwhile with HTTP 500; giving up
        then would leave the kernel on the server until it is culled.
        """
        deadline = asyncio.get_running_loop().time() + busy_for
        while True:
            try:
                await self.request("DELETE", f"kernels/{kernel_id}", ok_missing=True)
                return
            except KernelServerError as exc:
                if exc.status is None or exc.status < 500 or asyncio.get_running_loop().time() >= deadline:
                    raise
            await asyncio.sleep(0.25)

    async def has_contents(self) -> bool:
        """Whether the server offers the contents API (Jupyter Server does; Kernel Gateway does not)."""
        if self._has_contents is None:
            response = await self.request("GET", "contents", ok_missing=True, params={"content": "0"})
            self._has_contents = response.status_code == 200
        return self._has_contents


def delete_kernel_now(address: ServerAddress, kernel_id: str) -> None:
    """Blocking DELETE, for when awaiting is impossible (cancellation, interpreter exit)."""
    try:
        httpx.delete(address.api(f"kernels/{kernel_id}"), headers=address.headers, timeout=5.0)
    except httpx.HTTPError:
        pass  # the server is gone; so is the kernel, or it will be culled


def probe(address: ServerAddress, timeout: float = 3.0) -> str | None:
    """None if the server answers with this token, else a sentence saying why not (blocking)."""
    try:
        response = httpx.get(address.api("kernelspecs"), headers=address.headers, timeout=timeout)
    except httpx.HTTPError as exc:
        return str(unreachable(address, exc))
    if response.status_code in (401, 403):
        return str(refused(address, response.status_code, "GET /api/kernelspecs"))
    if response.status_code != 200:
        return f"the Jupyter server at {address.url} answered GET /api/kernelspecs with HTTP {response.status_code}"
    return None


def _server_message(response: httpx.Response) -> str:
    try:
        data = response.json()
    except ValueError:
        return response.text[:200]
    return str(data.get("message") or data.get("reason") or data)[:300]
