"""The script of ``llm_server.LLMServer``'s scripted model: the steps it takes in order, each a ``Reply`` (text and/or
``ToolCall``s) or a ``Fault`` (an HTTP error, a hang, a dropped connection), written in a test or read from JSON
(``steps_from_json``, for ``python -m dsagent.testing.llm_server --script steps.json``).

A step with ``role=`` (or ``model=``) answers only requests of that agent role (or model), so each role of a team graph
can have its own script.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Fault", "Reply", "Step", "ToolCall", "steps_from_json"]


@dataclass(frozen=True)
class ToolCall:
    """One tool call the scripted model makes; ``arguments`` as str is sent verbatim (may be bad JSON)."""

    name: str
    arguments: dict[str, Any] | str = field(default_factory=dict)
    id: str | None = None

    def arguments_json(self) -> str:
        return self.arguments if isinstance(self.arguments, str) else json.dumps(self.arguments)


@dataclass(frozen=True)
class Reply:
    """A successful answer: text and/or tool calls.

    ``finish_reason`` defaults to ``tool_calls`` when there are tool calls, else
    ``stop``. Token counts default to a rough estimate (characters / 4).
    ``delay`` waits before answering; ``chunk_size``/``chunk_delay`` shape the stream.
    ``role``/``model`` restrict which requests may take this step (None = any).
    """

    content: str | None = None
    tool_calls: Sequence[ToolCall] = ()
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    delay: float = 0.0
    chunk_size: int = 4
    chunk_delay: float = 0.0
    role: str | None = None
    model: str | None = None


@dataclass(frozen=True)
class Fault:
    """A failure instead of an answer; build one with the class methods."""

    kind: str  # "http", "hang" or "drop"
    status: int = 500
    message: str = ""
    error_type: str = "server_error"
    code: str | None = None
    retry_after: float | None = None
    delay: float = 0.0
    after_chunks: int = 0
    role: str | None = None
    model: str | None = None

    @classmethod
    def http(
        cls,
        status: int,
        message: str = "",
        *,
        error_type: str | None = None,
        code: str | None = None,
        retry_after: float | None = None,
        role: str | None = None,
        model: str | None = None,
    ) -> Fault:
        """An HTTP error with an OpenAI-style body (429 may carry ``Retry-After`` seconds)."""
        default_type = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
                        429: "rate_limit_error"}.get(status, "server_error")
        default_message = {429: "Rate limit reached for requests. Please try again later.",
                           500: "The server had an error while processing your request."}.get(status)
        return cls("http", status=status, message=message or default_message or f"scripted error {status}",
                   error_type=error_type or default_type, code=code, retry_after=retry_after,
                   role=role, model=model)

    @classmethod
    def hang(cls, seconds: float, *, role: str | None = None, model: str | None = None) -> Fault:
        """Say nothing for ``seconds`` (longer than the client's timeout), then close the connection."""
        return cls("hang", delay=seconds, role=role, model=model)

    @classmethod
    def drop(cls, *, after_chunks: int = 0, role: str | None = None, model: str | None = None) -> Fault:
        """Close the connection without an answer, or (streaming) after ``after_chunks`` chunks."""
        return cls("drop", after_chunks=after_chunks, role=role, model=model)


Step = Reply | Fault


def steps_from_json(data: list[dict[str, Any]]) -> list[Step]:
    """Steps from plain data: ``{"content": ..., "tool_calls": [{"name", "arguments"}], ...}`` is a Reply;
    ``{"fault": "http"|"hang"|"drop", ...}`` a Fault with the same keyword names as the dataclasses."""
    steps: list[Step] = []
    for item in data:
        item = dict(item)
        kind = item.pop("fault", None)
        if kind is None:
            calls = tuple(ToolCall(**c) for c in item.pop("tool_calls", []))
            steps.append(Reply(tool_calls=calls, **item))
        elif kind == "http":
            steps.append(Fault.http(item.pop("status"), **item))
        elif kind == "hang":
            steps.append(Fault.hang(item.pop("seconds"), **item))
        elif kind == "drop":
            steps.append(Fault.drop(**item))
        else:
            raise ValueError(f"unknown fault kind {kind!r}; use http, hang or drop")
    return steps

