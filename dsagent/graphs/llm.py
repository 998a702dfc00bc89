"""The LLM client the graphs use: one call, one normalized ``LLMResponse``.

It speaks to any OpenAI-compatible endpoint through ``openai.AsyncOpenAI``
(``OPENAI_BASE_URL`` / ``OPENAI_API_KEY``, or the ``llm_base_url`` setting),
with a model per agent role (``llm_model_<role>``, falling back to
``llm_model``)::

    async with LLMClient(settings) as llm:
        reply = await llm.chat(messages, role="coder", tools=TOOLS, on_token=print)
        messages.append(reply.assistant_message())
        for call in reply.tool_calls:      # call.arguments, or call.error to tell the model
            messages.append(tool_message(call.id, run(call)))
    llm.usage.to_dict()                     # tokens per role, for the run to persist

Tool calls come back parsed; arguments that are not a JSON object are kept as
data (``ToolCall.error``) so the agent can tell the model what was wrong.

Endpoints without tool support: in ``fenced`` mode the tools are not sent;
the model is told to write Python in ```python blocks and each block comes back
as a call of the code tool (``run_code``), so the graphs see the same shape
either way. The history (assistant tool calls, ``tool`` messages) is rewritten
into plain messages for such endpoints. ``llm_tool_mode=auto`` starts native
and switches a model to fenced for good when the endpoint rejects tools.

Failures: 429, 5xx, timeouts and connection errors are retried with
exponential backoff and jitter (``Retry-After`` honoured), then raise
``LLMUnavailable``; 400/401/403/404 raise ``LLMRequestError`` at once. Both
name the endpoint, model and role and say what to check. The API key never
appears in errors, events or logs.
"""

from __future__ import annotations

import asyncio
import email.utils
import functools
import json
import logging
import os
import random
import re
import ssl
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Self
from urllib.parse import urlsplit, urlunsplit

import openai

from dsagent.errors import LLMRequestError, LLMUnavailable, SettingsError
from dsagent.graphs.fenced import extract_code_blocks, fenced_history
from dsagent.kernel_gateway.base import run_hook
from dsagent.settings import Settings

__all__ = [
    "CODE_TOOL",
    "ROLES",
    "ROLE_HEADER",
    "EventHook",
    "LLMClient",
    "LLMResponse",
    "TokenHook",
    "TokenUsage",
    "ToolCall",
    "UsageMeter",
    "fit_messages",
    "prompt_tokens",
    "tool_message",
]

log = logging.getLogger(__name__)

ROLES = ("planner", "coder", "reviewer")
ROLE_HEADER = "X-Dsagent-Role"  # lets a scripted test server give each role its own script
CODE_TOOL = "run_code"
DEFAULT_BASE_URL = "https://api.openai.com/v1"
RETRY_AFTER_LIMIT = 120.0  # a longer wait than this means "quota", not "busy": fail instead
ToolMode = Literal["native", "fenced"]
TOOL_MODES = ("auto", "native", "fenced")
TokenHook = Callable[[str], None | Awaitable[None]]
EventHook = Callable[[str, dict[str, Any]], None | Awaitable[None]]

_TOOL_REFUSAL = re.compile(r"tool|function", re.IGNORECASE)
# an endpoint that refuses a response_format says so (vLLM/OpenAI: 400; llama-cpp-python 0.3: a 500 carrying
# pydantic's "Input should be 'text' or 'json_object'" for response_format.type)
_FORMAT_REFUSAL = re.compile(r"response_format|json_schema|json_object|grammar", re.IGNORECASE)
# structured outputs, best first: OpenAI's json_schema (OpenAI, vLLM, llama.cpp's C++ server, Ollama), then
# json_object + schema (llama-cpp-python's server), then none (the reply is parsed as text)
STRUCTURED_STYLES = ("json_schema", "json_object", "none")
STRUCTURED_MODES = ("auto", *STRUCTURED_STYLES)
CHARS_PER_TOKEN = 3  # for fitting a prompt into llm_context_tokens: on the safe side of the usual ~4


# -- results ----------------------------------------------------------------

@dataclass(frozen=True)
class ToolCall:
    """One tool call; ``arguments`` is None and ``error`` says why when ``raw_arguments`` is unusable."""

    id: str
    name: str
    raw_arguments: str
    arguments: dict[str, Any] | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @classmethod
    def parse(cls, id: str, name: str, raw_arguments: str) -> ToolCall:
        """Parse the model's argument string; bad JSON or a non-object becomes ``error``, never an exception."""
        if not name:
            return cls(id, name, raw_arguments, error="the tool call has no function name")
        if not raw_arguments.strip():
            return cls(id, name, raw_arguments, arguments={})
        try:
            value = json.loads(raw_arguments)
        except json.JSONDecodeError as exc:
            problem = f"the arguments of {name} are not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
            return cls(id, name, raw_arguments, error=problem)
        if not isinstance(value, dict):
            problem = f"the arguments of {name} must be a JSON object, not {type(value).__name__}"
            return cls(id, name, raw_arguments, error=problem)
        return cls(id, name, raw_arguments, arguments=value)


@dataclass(frozen=True)
class TokenUsage:
    """Token counts of one or more calls; ``estimated`` when the endpoint did not report them."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    estimated: bool = False

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: TokenUsage) -> TokenUsage:
        return TokenUsage(self.prompt_tokens + other.prompt_tokens, self.completion_tokens + other.completion_tokens,
                          self.estimated or other.estimated)

    def to_dict(self) -> dict[str, Any]:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.total_tokens, "estimated": self.estimated}


@dataclass(frozen=True)
class LLMResponse:
    """One model turn. In fenced mode ``text`` is the prose and the code blocks are ``tool_calls``."""

    text: str
    tool_calls: tuple[ToolCall, ...]
    finish_reason: str | None
    usage: TokenUsage
    model: str
    role: str
    mode: ToolMode

    def assistant_message(self) -> dict[str, Any]:
        """The message to append to the history before the tool results (OpenAI's shape, either mode)."""
        message: dict[str, Any] = {"role": "assistant", "content": self.text or None}
        if self.tool_calls:
            message["tool_calls"] = [
                {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.raw_arguments}}
                for c in self.tool_calls
            ]
        return message


def tool_message(call_id: str, content: str) -> dict[str, Any]:
    """The history message carrying a tool's result back to the model."""
    return {"role": "tool", "tool_call_id": call_id, "content": content}


@dataclass
class UsageMeter:
    """Tokens and calls summed per role; ``to_dict``/``from_dict`` let a run persist and resume it."""

    by_role: dict[str, TokenUsage] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)

    def add(self, role: str, usage: TokenUsage) -> None:
        self.by_role[role] = self.by_role.get(role, TokenUsage()) + usage
        self.calls[role] = self.calls.get(role, 0) + 1

    @property
    def total(self) -> TokenUsage:
        return sum(self.by_role.values(), TokenUsage())

    def to_dict(self) -> dict[str, Any]:
        roles = {role: {**u.to_dict(), "calls": self.calls.get(role, 0)} for role, u in self.by_role.items()}
        return {"roles": roles, "total": {**self.total.to_dict(), "calls": sum(self.calls.values())}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> UsageMeter:
        meter = cls()
        for role, u in (data.get("roles") or {}).items():
            meter.by_role[role] = TokenUsage(u["prompt_tokens"], u["completion_tokens"], bool(u.get("estimated")))
            meter.calls[role] = int(u.get("calls", 0))
        return meter


# -- the client -------------------------------------------------------------

@dataclass
class _Failure:
    """A failed attempt, classified: retry (after ``wait`` if the endpoint said) or give up."""

    retryable: bool
    reason: str  # connection, timeout, rate_limit, server_error, quota, auth, ...
    detail: str
    status: int | None = None
    wait: float | None = None


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """The TLS context every LLMClient of this process shares: the one the SDK's HTTP client would build (the CA
    bundle, or SSL_CERT_FILE / SSL_CERT_DIR as at first use), built once, as reading the CA bundle costs ~20-50 ms
    of CPU, at every chat turn and agent run otherwise."""
    try:  # the HTTP library the openai SDK is built on: httpx2 in recent releases, httpx before
        from httpx2 import create_ssl_context
    except ImportError:
        from httpx import create_ssl_context
    return create_ssl_context()


class LLMClient:
    """Chat completions against one OpenAI-compatible endpoint, with retries, fallback and usage accounting."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        code_tool: str = CODE_TOOL,
    ) -> None:
        self.settings = settings or Settings()
        s = self.settings
        if s.llm_tool_mode not in TOOL_MODES:
            raise SettingsError(f"setting llm_tool_mode = {s.llm_tool_mode!r} is invalid",
                                hint=f"use one of: {', '.join(TOOL_MODES)}", name="llm_tool_mode", value=s.llm_tool_mode)
        if s.llm_structured_outputs not in STRUCTURED_MODES:
            raise SettingsError(f"setting llm_structured_outputs = {s.llm_structured_outputs!r} is invalid",
                                hint=f"use one of: {', '.join(STRUCTURED_MODES)}", name="llm_structured_outputs",
                                value=s.llm_structured_outputs)
        self.base_url = base_url or s.llm_base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL
        key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY", "")
        self.code_tool = code_tool
        self.usage = UsageMeter()
        self._fenced_models: set[str] = set()
        self._structured: dict[str, str] = {}  # model -> the response_format style the endpoint took (or "none")
        if not key and urlsplit(self.base_url).hostname == urlsplit(DEFAULT_BASE_URL).hostname:
            raise LLMRequestError(
                f"no API key for the LLM endpoint {self.endpoint}",
                hint="set OPENAI_API_KEY, or point OPENAI_BASE_URL at an OpenAI-compatible server that needs none",
                endpoint=self.endpoint, model=s.llm_model, role="", status=None, reason="no_api_key",
            )
        self._secret = key
        # Local servers (vLLM, Ollama, llama.cpp) need no key, but the SDK insists on one.
        timeout = openai.Timeout(s.llm_timeout, connect=min(10.0, s.llm_timeout))
        self._client = openai.AsyncOpenAI(
            base_url=self.base_url,
            api_key=key or "unused",
            max_retries=0,  # retries are ours: configurable backoff, events, one clear error at the end
            timeout=timeout,
            # the SDK's own HTTP client, with the process's one TLS context (see _tls_context)
            http_client=openai.DefaultAsyncHttpxClient(verify=_tls_context(), timeout=timeout),
        )

    @property
    def endpoint(self) -> str:
        """The base URL without credentials or query, safe to show."""
        parts = urlsplit(self.base_url)
        host = parts.hostname or ""
        netloc = f"{host}:{parts.port}" if parts.port else host
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))

    def model_for(self, role: str) -> str:
        """The model a role uses: ``llm_model_<role>`` when set, else ``llm_model``."""
        return self.settings.get(f"llm_model_{role}") or self.settings.llm_model

    def mode_for(self, model: str) -> ToolMode:
        """``fenced`` when forced by ``llm_tool_mode`` or after the endpoint rejected tools for this model."""
        if self.settings.llm_tool_mode == "fenced" or model in self._fenced_models:
            return "fenced"
        return "native"

    def structured_style(self, model: str) -> str:
        """The response_format style requests for ``model`` use: forced by ``llm_structured_outputs``, else the
        best one the endpoint has not refused for this model (found once per client, as tool support is)."""
        forced = self.settings.llm_structured_outputs
        return forced if forced != "auto" else self._structured.get(model, STRUCTURED_STYLES[0])

    async def aclose(self) -> None:
        await self._client.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def chat(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        role: str = "planner",
        tools: Sequence[Mapping[str, Any]] | None = None,
        on_token: TokenHook | None = None,
        on_event: EventHook | None = None,
        stream: bool | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        schema: tuple[str, Mapping[str, Any]] | None = None,
    ) -> LLMResponse:
        """One model turn for ``role``; retries transient failures, then raises LLMUnavailable/LLMRequestError.

        ``on_token(text)`` gets streamed text as it arrives; ``on_event(kind, data)`` gets
        ``llm_retry``, ``llm_fallback`` and ``llm_prompt_trimmed`` notices (both hooks may be sync or async).
        ``schema``: (name, JSON schema) the reply should follow; sent as ``response_format`` where the
        endpoint takes it (the caller still parses the text: an endpoint may ignore it).
        """
        model = self.model_for(role)
        options: dict[str, Any] = {}
        if temperature is not None:
            options["temperature"] = temperature
        context = self.settings.llm_context_tokens
        if max_tokens is None and context > 0:  # leave the reply room in a small context (see fit_messages)
            max_tokens = _reply_room(context)
        if max_tokens is not None:
            options["max_tokens"] = max_tokens
        use_stream = self.settings.llm_stream if stream is None else stream
        messages = list(messages)
        if context > 0:
            messages, trimmed = fit_messages(messages, context - (max_tokens or 0), tools)
            if trimmed:
                await run_hook(on_event, "llm_prompt_trimmed", {"role": role, "model": model, **trimmed})
        call = _Call(self, messages, list(tools or []), role, model, use_stream, options, on_token, on_event)
        call.schema = None if tools else schema
        response = await call.run()
        self.usage.add(role, response.usage)
        return response

    # -- error texts, used by _Call ---------------------------------------
    def _scrub(self, text: str) -> str:
        return text.replace(self._secret, "***") if len(self._secret) >= 4 else text

    def _model_setting(self, role: str) -> str:
        return f"llm_model_{role}" if self.settings.get(f"llm_model_{role}") else "llm_model"

    async def _known_models(self) -> list[str]:
        """Best effort: the endpoint's model list, for a 404's hint."""
        try:
            page = await self._client.models.list(timeout=min(5.0, self.settings.llm_timeout))
            return sorted(m.id for m in page.data)[:20]
        except openai.OpenAIError:  # the hint just gets shorter
            return []


class _Call:
    """One ``chat()``: attempts, retry policy, the tools fallback and the final error."""

    def __init__(self, client: LLMClient, messages: list[Mapping[str, Any]], tools: list[Mapping[str, Any]],
                 role: str, model: str, stream: bool, options: dict[str, Any],
                 on_token: TokenHook | None, on_event: EventHook | None) -> None:
        self.client, self.messages, self.tools = client, messages, tools
        self.role, self.model, self.stream, self.options = role, model, stream, options
        self.on_token, self.on_event = on_token, on_event
        self.tokens_sent = 0
        self.schema: tuple[str, Mapping[str, Any]] | None = None
        self.format_sent: str | None = None

    async def run(self) -> LLMResponse:
        s = self.client.settings
        attempts = s.llm_max_retries + 1
        attempt = 0
        while True:
            mode = self.client.mode_for(self.model) if self.tools else "native"
            try:
                return await self._attempt(mode)
            except openai.APIError as exc:
                failure = _classify(exc)
            if mode == "native" and self._tools_rejected(failure):
                await self._switch_to_fenced(failure)  # mode_for() answers fenced from now on
                continue
            if self._format_rejected(failure):
                await self._next_structured_style(failure)  # structured_style() answers the next one from now on
                continue
            attempt += 1
            if not failure.retryable or (failure.wait or 0) > RETRY_AFTER_LIMIT or attempt == attempts:
                raise await self._error(failure, attempt)
            delay = _backoff(attempt, s.llm_backoff_initial, s.llm_backoff_max, failure.wait)
            log.info("LLM %s (role %s) at %s: %s; retry %d/%d in %.2fs", self.model, self.role,
                     self.client.endpoint, failure.reason, attempt, attempts - 1, delay)
            await run_hook(self.on_event, "llm_retry", {
                "role": self.role, "model": self.model, "attempt": attempt, "max_attempts": attempts,
                "delay": round(delay, 3), "reason": failure.reason, "status": failure.status,
                "restarted_stream": self.tokens_sent > 0,
            })
            self.tokens_sent = 0
            await asyncio.sleep(delay)

    async def _attempt(self, mode: ToolMode) -> LLMResponse:
        request: dict[str, Any] = {"model": self.model, **self.options,
                                   "extra_headers": {ROLE_HEADER: self.role}}
        if mode == "fenced":
            request["messages"] = fenced_history(self.messages, self.tools, self.client.code_tool)
        else:
            request["messages"] = self.messages
            if self.tools:
                request["tools"] = self.tools
        self.format_sent = None
        if self.schema is not None:
            style = self.client.structured_style(self.model)
            response_format = _response_format(style, *self.schema)
            if response_format is not None:
                request["response_format"], self.format_sent = response_format, style
        started = time.monotonic()
        if self.stream:
            text, calls, finish, usage = await self._streamed(request)
        else:
            text, calls, finish, usage = await self._whole(request)
        log.debug("LLM %s (role %s) answered in %.2fs", self.model, self.role, time.monotonic() - started)
        if mode == "fenced":
            text, blocks = extract_code_blocks(text)
            calls = [ToolCall(f"call_fenced_{uuid.uuid4().hex[:12]}", self.client.code_tool,
                              json.dumps({"code": code}), {"code": code}) for code in blocks]
        if usage is None:
            produced = text + "".join(c.raw_arguments for c in calls)
            usage = TokenUsage(_estimate(json.dumps(request["messages"])), _estimate(produced), estimated=True)
        return LLMResponse(text, tuple(calls), finish, usage, self.model, self.role, mode)

    async def _whole(self, request: dict[str, Any]) -> tuple[str, list[ToolCall], str | None, TokenUsage | None]:
        completion = await self.client._client.chat.completions.create(**request)
        if not completion.choices:  # some servers answer a filtered prompt this way
            return "", [], None, _usage(completion.usage)
        choice = completion.choices[0]
        calls = [ToolCall.parse(c.id, c.function.name, c.function.arguments or "")
                 for c in choice.message.tool_calls or [] if getattr(c, "function", None) is not None]
        text = choice.message.content or ""
        if text:
            await run_hook(self.on_token, text)
        return text, calls, choice.finish_reason, _usage(completion.usage)

    async def _streamed(self, request: dict[str, Any]) -> tuple[str, list[ToolCall], str | None, TokenUsage | None]:
        pieces: list[str] = []
        parts: dict[int, dict[str, str]] = {}
        finish: str | None = None
        usage: TokenUsage | None = None
        stream = await self.client._client.chat.completions.create(
            **request, stream=True, stream_options={"include_usage": True})
        async with stream:
            async for chunk in stream:
                usage = _usage(chunk.usage) or usage
                for choice in chunk.choices[:1]:
                    finish = choice.finish_reason or finish
                    if choice.delta.content:
                        pieces.append(choice.delta.content)
                        self.tokens_sent += 1
                        await run_hook(self.on_token, choice.delta.content)
                    for delta in choice.delta.tool_calls or []:
                        _merge_tool_delta(parts.setdefault(delta.index, {"id": "", "name": "", "args": ""}), delta)
        calls = [ToolCall.parse(p["id"] or f"call_{i}", p["name"], p["args"]) for i, p in sorted(parts.items())]
        return "".join(pieces), calls, finish, usage

    # -- fallback and errors ---------------------------------------------------
    def _tools_rejected(self, failure: _Failure) -> bool:
        return (bool(self.tools) and self.client.settings.llm_tool_mode == "auto"
                and failure.status in (400, 422) and bool(_TOOL_REFUSAL.search(failure.detail)))

    async def _switch_to_fenced(self, failure: _Failure) -> None:
        self.client._fenced_models.add(self.model)
        log.warning("LLM endpoint %s rejected tools for model %s (%s); using fenced code blocks",
                    self.client.endpoint, self.model, self.client._scrub(failure.detail))
        await run_hook(self.on_event, "llm_fallback", {
            "role": self.role, "model": self.model, "mode": "fenced", "reason": self.client._scrub(failure.detail),
        })

    def _format_rejected(self, failure: _Failure) -> bool:
        return (self.format_sent is not None and self.client.settings.llm_structured_outputs == "auto"
                and failure.status in (400, 422, 500) and bool(_FORMAT_REFUSAL.search(failure.detail)))

    async def _next_structured_style(self, failure: _Failure) -> None:
        assert self.format_sent is not None
        style = STRUCTURED_STYLES[STRUCTURED_STYLES.index(self.format_sent) + 1]
        self.client._structured[self.model] = style
        log.warning("LLM endpoint %s refused response_format %s for model %s (%s); using %s",
                    self.client.endpoint, self.format_sent, self.model, self.client._scrub(failure.detail)[:300], style)
        await run_hook(self.on_event, "llm_fallback", {
            "role": self.role, "model": self.model, "structured": style,
            "reason": self.client._scrub(failure.detail)[:500],
        })

    async def _error(self, failure: _Failure, attempts: int) -> LLMRequestError | LLMUnavailable:
        c = self.client
        where = f"the LLM endpoint {c.endpoint} (model {self.model!r}, role {self.role})"
        detail = c._scrub(failure.detail)
        fields = {"endpoint": c.endpoint, "model": self.model, "role": self.role,
                  "status": failure.status, "reason": failure.reason}
        setting = c._model_setting(self.role)
        if failure.retryable or failure.reason == "rate_limit":
            message, hint = _unavailable_text(where, failure, detail, attempts, c.settings.llm_timeout)
            return LLMUnavailable(message, hint=hint, attempts=attempts, **fields)
        if failure.reason == "not_found":
            known = await c._known_models()
            offered = f"; models this endpoint offers: {', '.join(known)}" if known else ""
            hint = (f"check the model name (setting {setting}, env DSAGENT_{setting.upper()}) and that "
                    f"OPENAI_BASE_URL is the API root, usually ending in /v1{offered}")
            return LLMRequestError(f"{where} does not know the model or the chat route (HTTP 404): {detail}",
                                   hint=hint, **fields)
        message, hint = _refused_text(where, failure, detail, setting)
        return LLMRequestError(message, hint=hint, **fields)


def _unavailable_text(where: str, failure: _Failure, detail: str, attempts: int, timeout: float) -> tuple[str, str]:
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


def _refused_text(where: str, failure: _Failure, detail: str, setting: str) -> tuple[str, str]:
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


# -- helpers ------------------------------------------------------------------

_NOT_RETRYABLE = {400: "bad_request", 401: "auth", 403: "permission", 404: "not_found", 422: "bad_request"}


def _classify(exc: openai.APIError) -> _Failure:
    if isinstance(exc, openai.APITimeoutError):
        return _Failure(True, "timeout", "timed out")
    if isinstance(exc, openai.APIConnectionError):
        cause = exc.__cause__ or exc.__context__
        return _Failure(True, "connection", str(cause or exc) or type(cause or exc).__name__)
    if not isinstance(exc, openai.APIStatusError):  # an error event inside a stream
        return _Failure(True, "stream_error", exc.message)
    status = exc.status_code
    body = exc.body if isinstance(exc.body, dict) else {}
    detail = str(body.get("message") or exc.message)
    if status == 429 and (exc.code == "insufficient_quota" or body.get("type") == "insufficient_quota"):
        return _Failure(False, "quota", detail, status)
    if status == 429:
        return _Failure(True, "rate_limit", detail, status, _retry_after(exc.response.headers))
    if status in (408, 409) or status >= 500:
        return _Failure(True, "server_error", detail, status, _retry_after(exc.response.headers))
    return _Failure(False, _NOT_RETRYABLE.get(status, "bad_request"), detail, status)


def _retry_after(headers: Mapping[str, str]) -> float | None:
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


def _backoff(attempt: int, initial: float, maximum: float, wait: float | None) -> float:
    """Exponential backoff with jitter (half to full); the endpoint's Retry-After wins when given."""
    if wait is not None:
        return wait
    return min(maximum, initial * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)


def _usage(usage: Any) -> TokenUsage | None:
    if usage is None:
        return None
    return TokenUsage(int(usage.prompt_tokens or 0), int(usage.completion_tokens or 0))


def _estimate(text: str) -> int:
    return (len(text) + 3) // 4  # ~4 characters per token; only when the endpoint reports nothing


def _response_format(style: str, name: str, schema: Mapping[str, Any]) -> dict[str, Any] | None:
    """The ``response_format`` of a request in ``style`` (None: send none)."""
    if style == "json_schema":
        return {"type": "json_schema", "json_schema": {"name": name, "schema": dict(schema)}}
    if style == "json_object":  # llama-cpp-python turns the schema into a grammar
        return {"type": "json_object", "schema": dict(schema)}
    return None


def _reply_room(context: int) -> int:
    """Tokens kept for the reply in a context of ``context`` tokens: a quarter, at least 256, at most 4096."""
    return max(256, min(4096, context // 4))


def prompt_tokens(messages: Sequence[Mapping[str, Any]], tools: Sequence[Mapping[str, Any]] | None = None) -> int:
    """A safe-side estimate of a prompt's tokens (``CHARS_PER_TOKEN``; no tokenizer of the model is at hand)."""
    return (len(json.dumps(list(messages))) + len(json.dumps(list(tools or [])))) // CHARS_PER_TOKEN + 1


def fit_messages(messages: list[Mapping[str, Any]], budget: int,
                 tools: Sequence[Mapping[str, Any]] | None = None) -> tuple[list[Mapping[str, Any]], dict[str, int] | None]:
    """``messages`` cut to about ``budget`` tokens: the longest text is shortened in its middle (its start and
    end say most), again until it fits or nothing long is left. (messages, None) when nothing was cut."""
    before = prompt_tokens(messages, tools)
    if before <= budget:
        return messages, None
    fitted = [dict(m) for m in messages]
    for _ in range(4 * len(fitted)):
        excess = (prompt_tokens(fitted, tools) - budget) * CHARS_PER_TOKEN
        if excess <= 0:
            break
        longest = max(fitted, key=lambda m: len(m.get("content") or "") if isinstance(m.get("content"), str) else 0)
        text = longest.get("content")
        if not isinstance(text, str) or len(text) <= 400:
            break  # what is left is short: send it, the endpoint says if it still does not fit
        keep = max(300, len(text) - excess - 120)
        head, tail = text[: keep * 2 // 3], text[len(text) - keep // 3:]
        longest["content"] = f"{head}\n[... {len(text) - keep} characters left out to fit the model's context ...]\n{tail}"
    return fitted, {"tokens_before": before, "tokens_after": prompt_tokens(fitted, tools), "limit": budget}


def _merge_tool_delta(part: dict[str, str], delta: Any) -> None:
    """Fold one streamed tool-call fragment in: id and name come once, arguments in pieces."""
    part["id"] = delta.id or part["id"]
    function = delta.function
    if function is None:
        return
    if function.name and function.name != part["name"]:  # some servers repeat the name in every delta
        part["name"] += function.name
    part["args"] += function.arguments or ""
