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
import functools
import json
import logging
import os
import re
import ssl
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Self
from urllib.parse import urlsplit, urlunsplit

import openai

from dsagent.errors import LLMRequestError, LLMUnavailable, SettingsError
from dsagent.graphs.fenced import extract_code_blocks, fenced_history
from dsagent.graphs.llm_failures import Failure, backoff, classify, refused_text, unavailable_text
from dsagent.graphs.llm_results import LLMResponse, TokenUsage, ToolCall, ToolMode, UsageMeter, tool_message
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


# -- the client -------------------------------------------------------------

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
                failure = classify(exc)
            if mode == "native" and self._tools_rejected(failure):
                await self._switch_to_fenced(failure)  # mode_for() answers fenced from now on
                continue
            if self._format_rejected(failure):
                await self._next_structured_style(failure)  # structured_style() answers the next one from now on
                continue
            attempt += 1
            if not failure.retryable or (failure.wait or 0) > RETRY_AFTER_LIMIT or attempt == attempts:
                raise await self._error(failure, attempt)
            delay = backoff(attempt, s.llm_backoff_initial, s.llm_backoff_max, failure.wait)
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
    def _tools_rejected(self, failure: Failure) -> bool:
        return (bool(self.tools) and self.client.settings.llm_tool_mode == "auto"
                and failure.status in (400, 422) and bool(_TOOL_REFUSAL.search(failure.detail)))

    async def _switch_to_fenced(self, failure: Failure) -> None:
        self.client._fenced_models.add(self.model)
        log.warning("LLM endpoint %s rejected tools for model %s (%s); using fenced code blocks",
                    self.client.endpoint, self.model, self.client._scrub(failure.detail))
        await run_hook(self.on_event, "llm_fallback", {
            "role": self.role, "model": self.model, "mode": "fenced", "reason": self.client._scrub(failure.detail),
        })

    def _format_rejected(self, failure: Failure) -> bool:
        return (self.format_sent is not None and self.client.settings.llm_structured_outputs == "auto"
                and failure.status in (400, 422, 500) and bool(_FORMAT_REFUSAL.search(failure.detail)))

    async def _next_structured_style(self, failure: Failure) -> None:
        assert self.format_sent is not None
        style = STRUCTURED_STYLES[STRUCTURED_STYLES.index(self.format_sent) + 1]
        self.client._structured[self.model] = style
        log.warning("LLM endpoint %s refused response_format %s for model %s (%s); using %s",
                    self.client.endpoint, self.format_sent, self.model, self.client._scrub(failure.detail)[:300], style)
        await run_hook(self.on_event, "llm_fallback", {
            "role": self.role, "model": self.model, "structured": style,
            "reason": self.client._scrub(failure.detail)[:500],
        })

    async def _error(self, failure: Failure, attempts: int) -> LLMRequestError | LLMUnavailable:
        c = self.client
        where = f"the LLM endpoint {c.endpoint} (model {self.model!r}, role {self.role})"
        detail = c._scrub(failure.detail)
        fields = {"endpoint": c.endpoint, "model": self.model, "role": self.role,
                  "status": failure.status, "reason": failure.reason}
        setting = c._model_setting(self.role)
        if failure.retryable or failure.reason == "rate_limit":
            message, hint = unavailable_text(where, failure, detail, attempts, c.settings.llm_timeout)
            return LLMUnavailable(message, hint=hint, attempts=attempts, **fields)
        if failure.reason == "not_found":
            known = await c._known_models()
            offered = f"; models this endpoint offers: {', '.join(known)}" if known else ""
            hint = (f"check the model name (setting {setting}, env DSAGENT_{setting.upper()}) and that "
                    f"OPENAI_BASE_URL is the API root, usually ending in /v1{offered}")
            return LLMRequestError(f"{where} does not know the model or the chat route (HTTP 404): {detail}",
                                   hint=hint, **fields)
        message, hint = refused_text(where, failure, detail, setting)
        return LLMRequestError(message, hint=hint, **fields)


# -- helpers ------------------------------------------------------------------

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
