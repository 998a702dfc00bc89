"""How a failed call to the LLM endpoint is judged: worth another attempt or not (``classify``), how long to wait
first (``retry_after``, ``backoff``), and what the final error says (``unavailable_text``, ``refused_text``).

Only ``graphs/llm.py``'s client uses them; they hold the policy its docstring describes (429, 5xx, timeouts and
connection errors are retried; 400/401/403/404 are not).
"""

from __future__ import annotations

import email.utils
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass

import openai

__all__ = ["Failure", "backoff", "classify", "refused_text", "retry_after", "unavailable_text"]

@dataclass
class Failure:
    """A failed attempt, classified: retry (after ``wait`` if the endpoint said) or give up."""

    retryable: bool
    reason: str  # connection, timeout, rate_limit, server_error, quota, auth, ...
    detail: str
    status: int | None = None
    wait: float | None = None


NOT_RETRYABLE = {400: "bad_request", 401: "auth", 403: "permission", 404: "not_found", 422: "bad_request"}


def classify(exc: openai.APIError) -> Failure:
    if isinstance(exc, openai.APITimeoutError):
        return Failure(True, "timeout", "timed out")
    if isinstance(exc, openai.APIConnectionError):
        cause = exc.__cause__ or exc.__context__
        return Failure(True, "connection", str(cause or exc) or type(cause or exc).__name__)
    if not isinstance(exc, openai.APIStatusError):  # an error event inside a stream
        return Failure(True, "stream_error", exc.message)
    status = exc.status_code
    body = exc.body if isinstance(exc.body, dict) else {}
    detail = str(body.get("message") or exc.message)
    if status == 429 and (exc.code == "insufficient_quota" or body.get("type") == "insufficient_quota"):
        return Failure(False, "quota", detail, status)
    if status == 429:
        return Failure(True, "rate_limit", detail, status, retry_after(exc.response.headers))
    if status in (408, 409) or status >= 500:
        return Failure(True, "server_error", detail, status, retry_after(exc.response.headers))
    return Failure(False, NOT_RETRYABLE.get(status, "bad_request"), detail, status)


def retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds from ``retry-after-ms`` or ``retry-after`` (seconds or an HTTP date); None when absent or unreadable."""
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            return max(0.0, float(value) * scale)
        except ValueError:
            pass
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            continue
        return max(0.0, when.timestamp() - time.time())
    return None


def backoff(attempt: int, initial: float, maximum: float, wait: float | None) -> float:
    """Exponential backoff with jitter (half to full); the endpoint's Retry-After wins when given."""
    if wait is not None:
        return wait
    return min(maximum, initial * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)


def unavailable_text(where: str, failure: Failure, detail: str, attempts: int, timeout: float) -> tuple[str, str]:
    tries = f"{attempts} attempt{'s' if attempts != 1 else ''}"
    if failure.reason == "rate_limit":
        wait = f"; it asks to wait {failure.wait:g} s" if failure.wait else ""
        return (f"{where} kept rate-limiting requests (HTTP 429) after {tries}{wait}: {detail}",
                "wait and try again, run fewer agents at once, or raise llm_max_retries / llm_backoff_max")
    if failure.reason == "timeout":
        return (f"{where} did not answer within llm_timeout={timeout:g} s ({tries})",
                ("check that the endpoint is up and not overloaded; for slow local models raise llm_timeout "
                 "(DSAGENT_LLM_TIMEOUT)"))
    if failure.reason == "connection":
        return (f"cannot connect to {where} after {tries}: {detail}",
                "check that the server is running and that OPENAI_BASE_URL (or llm_base_url) points at it")
    last = f"HTTP {failure.status}" if failure.status else failure.reason
    return (f"{where} failed on every attempt ({tries}; last: {last}): {detail}",
            "the endpoint itself is failing: check its logs or status page and try again later")


def refused_text(where: str, failure: Failure, detail: str, setting: str) -> tuple[str, str]:
    if failure.reason == "auth":
        return (f"{where} rejected the API key (HTTP 401): {detail}",
                "set OPENAI_API_KEY to a valid key for this endpoint (and OPENAI_BASE_URL to the endpoint it is for)")
    if failure.reason == "permission":
        return (f"{where} refused access (HTTP 403): {detail}",
                f"use a key with access to this model, or pick another model ({setting})")
    if failure.reason == "quota":
        return (f"{where} says the quota is exhausted (HTTP 429): {detail}",
                "check the account's billing and limits, or use another endpoint/key")
    return (f"{where} refused the request (HTTP {failure.status}): {detail}",
            (f"the endpoint's message says what it disliked; check that the model ({setting}) supports chat "
             "completions and the options used (tools: set llm_tool_mode=fenced for endpoints without tool calling)"))
