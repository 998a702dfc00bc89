"""What the E2B SDK hands back, in dsagent's terms: results as nbformat outputs, exceptions as ``DsagentError``s."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx
from e2b import (
    AuthenticationException,
    FileNotFoundException,
    NotFoundException,
    RateLimitException,
    TimeoutException,
)
from e2b.exceptions import (
    SandboxNotRunningException,
    SandboxUnreachableException,
    ServiceBusyException,
)
from e2b_code_interpreter import Result

from dsagent.errors import DsagentError, SandboxServiceError
from dsagent.kernel_gateway.hidden_cell import NUMBER_FROM_ONE
from dsagent.kernel_gateway.models import CHART_MIME

__all__ = [
    "API_KEY_VAR", "E2B_MIME", "REPR_MIME", "STARTUP_CODE", "STARTUP_FILE", "STARTUP_USER", "result_output", "setup_code", "translate_error",
]

API_KEY_VAR = "E2B_API_KEY"

#: the code interpreter strips the quotes off a str result's text/plain; this
#: IPython startup file adds the exact repr under its own mime type. The
#: code-interpreter template runs Jupyter as root, so kernels read root's profile.
REPR_MIME = "text/x-dsagent-repr"
STARTUP_FILE = "/root/.ipython/profile_default/startup/50-dsagent-repr.py"
STARTUP_USER = "root"
STARTUP_CODE = f'''\
# dsagent: keep the exact text/plain of str results (the E2B code interpreter strips their quotes)
from IPython import get_ipython
from IPython.core.formatters import BaseFormatter
from traitlets import Unicode


class _DsagentReprFormatter(BaseFormatter):
    format_type = Unicode({REPR_MIME!r})
    print_method = "_dsagent_repr_"


_ip = get_ipython()
if _ip is not None:
    _plain = _ip.display_formatter.formatters["text/plain"]
    _formatter = _DsagentReprFormatter(parent=_ip.display_formatter)
    _formatter.for_type(str, _plain)
    _ip.display_formatter.formatters[{REPR_MIME!r}] = _formatter
del _ip
'''
#: the code interpreter's Result fields -> nbformat mime types. E2B's chart
#: (``e2b/chart``: a matplotlib figure's elements, a small table) gets a JSON
#: mime type so the notebook stays valid nbformat, and becomes an artifact of its
#: own (``artifacts/capture.py``). ``data`` (``e2b/data``: a displayed DataFrame's
#: whole content again, 18 MB for 300k x 3) is left out on purpose: the frame is
#: captured as a Parquet table artifact on every backend, and its text/html and
#: text/plain stay in the output.
E2B_MIME = {
    "text": "text/plain",
    "html": "text/html",
    "markdown": "text/markdown",
    "svg": "image/svg+xml",
    "png": "image/png",
    "jpeg": "image/jpeg",
    "pdf": "application/pdf",
    "latex": "text/latex",
    "json": "application/json",
    "javascript": "application/javascript",
    "chart": CHART_MIME,
}


def result_output(result: Result, execution_count: int | None) -> tuple[str, dict[str, Any]]:
    """An SDK ``Result`` as an iopub message type and content (``execute_result`` or ``display_data``)."""
    data: dict[str, Any] = {}
    for field, mime in E2B_MIME.items():
        value = result.chart.to_dict() if field == "chart" and result.chart is not None else getattr(result, field, None)
        if value is not None and value != "":
            data[mime] = value
    extra = dict(result.extra or {})
    exact = extra.pop(REPR_MIME, None)
    if exact is not None:
        data["text/plain"] = exact
    data.update(extra)
    content: dict[str, Any] = {"data": data, "metadata": {}}
    if result.is_main_result:
        content["execution_count"] = execution_count
        return "execute_result", content
    return "display_data", content


def setup_code(folder: str, env: Mapping[str, str]) -> str:
    """The cell that puts a (re)started kernel in the session's work dir with its env; the user's next cell is In [1].

    E2B's server starts a restarted kernel in ``/home/user`` and has no
    per-context env; its own per-cell ``envs`` quote values naively (a ``'``
    is a SyntaxError in the user's cell, ``\\n`` becomes a newline), so the
    env goes in as a Python literal here: any character arrives as it is.
    """
    return (
        "import os as _dsagent_os\n"
        f"_dsagent_os.chdir({folder!r})\n"
        + (f"_dsagent_os.environ.update({dict(env)!r})\n" if env else "")
        + "del _dsagent_os\n"
        + NUMBER_FROM_ONE
    )


def translate_error(exc: BaseException, action: str, sandbox_id: str | None = None) -> DsagentError:
    """The ``DsagentError`` for an exception of the E2B SDK (or its HTTP layer) while doing ``action``."""
    where = f" (sandbox {sandbox_id})" if sandbox_id else ""

    def error(reason: str, what: str, hint: str) -> SandboxServiceError:
        return SandboxServiceError(f"{action}{where}: {what}", hint=hint, name="e2b", reason=reason, sandbox_id=sandbox_id)

    if isinstance(exc, AuthenticationException):
        return error("auth", f"E2B refused the API key: {exc}", f"check {API_KEY_VAR} (a key from https://e2b.dev/dashboard)")
    if isinstance(exc, RateLimitException) or getattr(exc, "status_code", None) == 429:
        return error("rate_limit", f"E2B rate limit or sandbox quota reached: {exc}",
                     "wait and retry, shut down sandboxes you no longer use, or raise your plan's limits")
    if isinstance(exc, ServiceBusyException):
        return error("busy", f"E2B has no capacity right now: {exc}", "retry in a minute")
    gone = isinstance(exc, (SandboxNotRunningException, NotFoundException)) and not isinstance(exc, FileNotFoundException)
    if gone or (isinstance(exc, TimeoutException) and "sandbox was killed" in str(exc)):
        return error("expired", f"the sandbox is gone (it reached its timeout or was killed): {exc}",
                     "start a new session (or restart() this one); raise e2b_timeout if sandboxes expire while in use")
    if isinstance(exc, (httpx.TransportError, ConnectionError, OSError, SandboxUnreachableException)) or (
        isinstance(exc, TimeoutException) and "timed out" in str(exc).lower()
    ):
        return error("network", f"cannot reach E2B: {exc or type(exc).__name__}",
                     "check the network connection (and E2B's status page), then retry")
    return error("sandbox", f"{type(exc).__name__}: {exc}", "retry; if it persists, start a new session")
