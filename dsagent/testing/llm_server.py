"""A scripted OpenAI-compatible chat server on loopback, for tests and demos.

The real ``openai`` SDK talks to it over HTTP, so the client code under test
is the code that runs against a real endpoint. A test writes a *script*: the
steps the "model" takes, in order, each either a ``Reply`` (text and/or tool
calls) or a ``Fault`` (an HTTP error, a hang past the client's timeout, a
dropped connection). The server answers each request with the next step that
matches it and records what it received, so tests can assert on what the
agent sent::

    with LLMServer([Reply("hi"), Reply(tool_calls=[ToolCall("run_code", {"code": "1+1"})])]) as llm:
        client = AsyncOpenAI(base_url=llm.base_url, api_key="test")
        ...
        assert llm.requests[0].messages[-1]["content"] == "hello"
        llm.assert_consumed()

Wire format, as OpenAI sends it: ``POST /v1/chat/completions`` answers JSON
or, with ``"stream": true``, server-sent events (``data: {chunk}`` lines and a
final ``data: [DONE]``; tool calls arrive as deltas with ``index``, then
``id``/``type``/``function.name`` once, then ``function.arguments``
fragments; with ``stream_options.include_usage`` a last chunk with empty
``choices`` carries ``usage``). ``GET /v1/models`` lists the models. Errors
use OpenAI's body ``{"error": {"message", "type", "param", "code"}}``.

Roles: the dsagent client sends the agent role (planner, coder, reviewer...)
in the ``X-Dsagent-Role`` header; a step with ``role=`` (or ``model=``) is
only used for matching requests, so each role of a team graph can have its
own script. ``tools_supported=False`` answers every request that carries
``tools`` with a 400, as endpoints without tool support do.

Structured outputs (``response_format=``): ``None`` ignores the field, as
servers without structured outputs do; ``"openai"`` takes ``json_schema`` and
``json_object`` (OpenAI, vLLM, llama.cpp's C++ server, Ollama); ``"llama_cpp"``
takes only ``json_object`` (+ ``schema``) and answers ``json_schema`` as
llama-cpp-python 0.3's server does, a 500 carrying pydantic's validation
message; ``"reject"`` answers any ``response_format`` with a 400. A server
that honours a schema constrains the model's output to it, so a scripted
reply that does not follow it is a script bug: it is recorded in ``errors``.

The steps (``Reply``, ``Fault``, ``ToolCall``, ``steps_from_json``) are in
``llm_script.py``. Run one by hand: ``python -m dsagent.testing.llm_server
--script steps.json`` (a JSON list of steps, see ``steps_from_json``).
"""

from __future__ import annotations

import argparse
import json
import logging
import socket
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Self

# the script's steps live in llm_script.py; they are imported from here as before
from dsagent.testing.llm_script import Fault, Reply, Step, ToolCall, steps_from_json

__all__ = [
    "ROLE_HEADER",
    "Fault",
    "LLMServer",
    "RecordedRequest",
    "Reply",
    "ToolCall",
    "steps_from_json",
]

log = logging.getLogger(__name__)

ROLE_HEADER = "X-Dsagent-Role"
DEFAULT_MODEL = "scripted-model"
RESPONSE_FORMATS = (None, "openai", "llama_cpp", "reject")
# llama-cpp-python's server (0.3.x) validates response_format.type against Literal["text", "json_object"]; its route
# handler turns the pydantic error into a 500 (llama_cpp/server/errors.py: RouteErrorHandler)
LLAMA_CPP_FORMAT_ERROR = ("1 validation error for CreateChatCompletionRequest\nresponse_format.type\n  Input should be 'text' "
                          "or 'json_object' [type=literal_error, input_value='json_schema', input_type=str]")
# What vLLM answers when a request has tools but the server has no tool parser.
NO_TOOLS_MESSAGE = '"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set'


@dataclass
class RecordedRequest:
    """What one request carried; ``step`` is the script step that answered it (None if none did)."""

    path: str
    body: dict[str, Any]
    role: str | None
    api_key: str | None
    step: Step | None = None

    @property
    def model(self) -> str | None:
        return self.body.get("model")

    @property
    def messages(self) -> list[dict[str, Any]]:
        return list(self.body.get("messages") or [])

    @property
    def tools(self) -> list[dict[str, Any]]:
        return list(self.body.get("tools") or [])

    @property
    def tool_names(self) -> list[str]:
        return [t.get("function", {}).get("name", "") for t in self.tools]

    @property
    def stream(self) -> bool:
        return bool(self.body.get("stream"))

    @property
    def response_format(self) -> dict[str, Any] | None:
        value = self.body.get("response_format")
        return value if isinstance(value, dict) else None


def _matches(step: Step, role: str | None, model: str | None) -> bool:
    return (step.role is None or step.role == role) and (step.model is None or step.model == model)


class LLMServer:
    """The scripted server: ``with LLMServer(steps) as llm: ... llm.base_url``; thread-safe."""

    def __init__(
        self,
        steps: Iterable[Step] = (),
        *,
        tools_supported: bool = True,
        response_format: str | None = None,
        models: Sequence[str] = (DEFAULT_MODEL,),
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        if response_format not in RESPONSE_FORMATS:
            raise ValueError(f"response_format must be one of {RESPONSE_FORMATS}, not {response_format!r}")
        self.tools_supported = tools_supported
        self.response_format = response_format
        self.models = list(models)
        self.requests: list[RecordedRequest] = []
        self.errors: list[str] = []  # requests no step matched, handler failures
        self._steps: list[Step] = list(steps)
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._httpd = ThreadingHTTPServer((host, port), _make_handler(self))
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------
    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def base_url(self) -> str:
        """What ``AsyncOpenAI(base_url=...)`` / ``OPENAI_BASE_URL`` should be."""
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> LLMServer:
        if self._thread is None:
            # a short poll keeps close() fast (shutdown waits for the loop to notice)
            self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                            name="llm-server", daemon=True)
            self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving; hanging requests are released at once."""
        self._closing.set()
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._httpd.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- script ------------------------------------------------------------
    def add(self, *steps: Step) -> None:
        """Append steps to the script (also while serving)."""
        with self._lock:
            self._steps.extend(steps)

    @property
    def remaining(self) -> list[Step]:
        with self._lock:
            return list(self._steps)

    def assert_consumed(self) -> None:
        """Fail when steps were left over or some request found no step."""
        problems = list(self.errors)
        if self.remaining:
            problems.append(f"{len(self.remaining)} script step(s) never used: {self.remaining!r}")
        if problems:
            raise AssertionError("scripted LLM server: " + "; ".join(problems))

    def requests_for(self, role: str) -> list[RecordedRequest]:
        return [r for r in self.requests if r.role == role]

    def _take_step(self, request: RecordedRequest) -> Step | None:
        with self._lock:
            self.requests.append(request)
            for i, step in enumerate(self._steps):
                if _matches(step, request.role, request.model):
                    request.step = self._steps.pop(i)
                    return request.step
            self.errors.append(f"request #{len(self.requests)} (role={request.role}, model={request.model}) "
                               "found no script step")
            return None

    def _record_only(self, request: RecordedRequest) -> None:
        with self._lock:
            self.requests.append(request)

    def _wait(self, seconds: float) -> bool:
        """Sleep unless the server closes meanwhile; True when it closed."""
        return self._closing.wait(seconds) if seconds > 0 else self._closing.is_set()


# -- HTTP -------------------------------------------------------------------

def _make_handler(server: LLMServer) -> type[BaseHTTPRequestHandler]:
    class Handler(_ChatHandler):
        llm = server

    return Handler


class _ChatHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like real endpoints; streams use chunked encoding
    llm: LLMServer

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("llm-server: " + format, *args)

    # routes
    def do_GET(self) -> None:
        if self.path.rstrip("/") == "/v1/models":
            data = [{"id": m, "object": "model", "created": 0, "owned_by": "dsagent-scripted"} for m in self._all_models()]
            self._send_json(200, {"object": "list", "data": data})
        else:
            self._send_error(404, f"no route {self.path}", "not_found_error")

    def do_POST(self) -> None:
        body = self._read_json()
        if self.path.rstrip("/") != "/v1/chat/completions":
            self._send_error(404, f"no route {self.path}", "not_found_error")
            return
        if body is None:
            self._send_error(400, "request body is not valid JSON", "invalid_request_error")
            return
        auth = self.headers.get("Authorization", "")
        request = RecordedRequest(self.path, body, self.headers.get(ROLE_HEADER),
                                  auth.removeprefix("Bearer ") if auth else None)
        if body.get("tools") and not self.llm.tools_supported:
            self.llm._record_only(request)
            self._send_error(400, NO_TOOLS_MESSAGE, "BadRequestError")
            return
        refusal = _format_refusal(self.llm.response_format, request.response_format)
        if refusal is not None:
            self.llm._record_only(request)
            self._send_error(*refusal)
            return
        step = self.llm._take_step(request)
        if step is None:
            self._send_error(400, f"scripted LLM server: no script step left for role={request.role!r}, "
                             f"model={request.model!r} (request #{len(self.llm.requests)})", "script_exhausted")
            return
        schema = _schema_honoured(self.llm.response_format, request.response_format)
        if schema is not None and isinstance(step, Reply):
            problem = _breaks_schema(step.content or "", schema)
            if problem:
                self.llm.errors.append(f"request #{len(self.llm.requests)} (role={request.role}) asked for a JSON schema "
                                       f"the scripted reply breaks ({problem}); a server that honours it cannot answer so")
        try:
            self._answer(step, body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout); nothing to answer
        except Exception as exc:  # a bug here must show up in the test, not hang it
            log.exception("scripted LLM server failed")
            self.llm.errors.append(f"handler failed: {exc!r}")
            self.close_connection = True

    def _answer(self, step: Step, body: dict[str, Any]) -> None:
        if self.llm._wait(step.delay):
            return self._drop()
        if isinstance(step, Fault):
            if step.kind == "http":
                return self._send_error(step.status, step.message, step.error_type, step.code, step.retry_after)
            if step.kind == "hang" or not body.get("stream") or step.after_chunks == 0:
                return self._drop()
        chunks = _completion_chunks(step, body) if body.get("stream") else None
        if chunks is None:
            assert isinstance(step, Reply)
            return self._send_json(200, _completion(step, body))
        limit = step.after_chunks if isinstance(step, Fault) else None
        self._send_stream(chunks, limit, step.chunk_delay if isinstance(step, Reply) else 0.0)

    # plumbing
    def _all_models(self) -> list[str]:
        named = [s.model for s in self.llm.remaining if s.model]
        return list(dict.fromkeys([*self.llm.models, *named]))

    def _read_json(self) -> dict[str, Any] | None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            data = json.loads(raw or b"{}")
        except ValueError:
            return None
        return data if isinstance(data, dict) else None

    def _send_json(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _send_error(self, status: int, message: str, error_type: str, code: str | None = None,
                    retry_after: float | None = None) -> None:
        headers = {"Retry-After": f"{retry_after:g}"} if retry_after is not None else None
        body = {"error": {"message": message, "type": error_type, "param": None, "code": code}}
        self._send_json(status, body, headers)

    def _send_stream(self, chunks: Iterator[dict[str, Any] | str], limit: int | None, delay: float) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for sent, chunk in enumerate(chunks):
            if limit is not None and sent >= limit:
                return self._drop()
            if sent and self.llm._wait(delay):
                return self._drop()
            data = chunk if isinstance(chunk, str) else json.dumps(chunk)
            self._write_chunk(f"data: {data}\n\n".encode())
        self._write_chunk(b"")

    def _write_chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _drop(self) -> None:
        """Cut the connection without finishing the answer (what a crashed proxy does)."""
        self.close_connection = True
        try:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


# -- structured outputs ---------------------------------------------------------

def _format_refusal(mode: str | None, requested: dict[str, Any] | None) -> tuple[int, str, str] | None:
    """(status, message, error type) when a server of ``mode`` refuses the requested response_format."""
    if requested is None or mode is None:
        return None
    kind = requested.get("type")
    if mode == "reject":
        return 400, "response_format is not supported by this server", "invalid_request_error"
    if mode == "llama_cpp" and kind not in ("text", "json_object"):
        return 500, LLAMA_CPP_FORMAT_ERROR.replace("'json_schema'", repr(kind)), "internal_server_error"
    if mode == "openai" and kind not in ("text", "json_object", "json_schema"):
        return 400, f"Invalid value: {kind!r}. Supported values are: 'text', 'json_object', and 'json_schema'.", \
            "invalid_request_error"
    return None


def _schema_honoured(mode: str | None, requested: dict[str, Any] | None) -> dict[str, Any] | None:
    """The JSON schema a server of ``mode`` constrains the reply to ({} = any JSON object), or None."""
    if mode is None or requested is None:
        return None
    kind = requested.get("type")
    if kind == "json_schema":
        return dict((requested.get("json_schema") or {}).get("schema") or {})
    if kind == "json_object":
        return dict(requested.get("schema") or {}) if mode == "llama_cpp" else {}
    return None


def _breaks_schema(content: str, schema: dict[str, Any]) -> str | None:
    """Why ``content`` is not a JSON value that ``schema`` allows (None: it is)."""
    import jsonschema  # comes with nbformat

    try:
        value = json.loads(content)
    except ValueError as exc:
        return f"not JSON: {exc}"
    if not schema:
        return None if isinstance(value, dict) else "not a JSON object"
    try:
        jsonschema.validate(value, schema)
    except jsonschema.ValidationError as exc:
        return exc.message
    return None


# -- OpenAI payloads ----------------------------------------------------------

def _estimate_tokens(text: str) -> int:
    return max(1, len(text) // 4) if text else 0


def _tool_call_ids(reply: Reply) -> list[str]:
    return [call.id or f"call_{uuid.uuid4().hex[:24]}" for call in reply.tool_calls]


def _usage(reply: Reply, body: dict[str, Any]) -> dict[str, int]:
    prompt = reply.prompt_tokens
    if prompt is None:
        prompt = _estimate_tokens(json.dumps(body.get("messages") or []))
    completion = reply.completion_tokens
    if completion is None:
        produced = (reply.content or "") + "".join(c.name + c.arguments_json() for c in reply.tool_calls)
        completion = _estimate_tokens(produced)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _finish_reason(reply: Reply) -> str:
    return reply.finish_reason or ("tool_calls" if reply.tool_calls else "stop")


def _envelope(body: dict[str, Any], obj: str, completion_id: str) -> dict[str, Any]:
    return {"id": completion_id, "object": obj, "created": int(time.time()),
            "model": body.get("model") or DEFAULT_MODEL, "system_fingerprint": "fp_scripted"}


def _completion(reply: Reply, body: dict[str, Any]) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": reply.content, "refusal": None}
    if reply.tool_calls:
        message["tool_calls"] = [
            {"id": call_id, "type": "function", "function": {"name": call.name, "arguments": call.arguments_json()}}
            for call, call_id in zip(reply.tool_calls, _tool_call_ids(reply))
        ]
    choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": _finish_reason(reply)}
    return {**_envelope(body, "chat.completion", f"chatcmpl-{uuid.uuid4().hex}"),
            "choices": [choice], "usage": _usage(reply, body)}


def _pieces(text: str, size: int) -> list[str]:
    size = max(1, size)
    return [text[i:i + size] for i in range(0, len(text), size)]


def _completion_chunks(step: Step, body: dict[str, Any]) -> Iterator[dict[str, Any] | str]:
    """The SSE payloads of a streamed answer, in OpenAI's order; a Fault streams a plain text reply."""
    reply = step if isinstance(step, Reply) else Reply(content="partial answer that never ends " * 4)
    envelope = _envelope(body, "chat.completion.chunk", f"chatcmpl-{uuid.uuid4().hex}")
    with_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    extra = {"usage": None} if with_usage else {}

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {**envelope, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
                **extra}

    first: dict[str, Any] = {"role": "assistant", "content": "" if reply.content else None, "refusal": None}
    yield chunk(first)
    for piece in _pieces(reply.content or "", reply.chunk_size):
        yield chunk({"content": piece})
    for index, (call, call_id) in enumerate(zip(reply.tool_calls, _tool_call_ids(reply))):
        head = {"index": index, "id": call_id, "type": "function", "function": {"name": call.name, "arguments": ""}}
        yield chunk({"tool_calls": [head]})
        for piece in _pieces(call.arguments_json(), reply.chunk_size * 2):
            yield chunk({"tool_calls": [{"index": index, "function": {"arguments": piece}}]})
    yield chunk({}, _finish_reason(reply))
    if with_usage:
        yield {**envelope, "choices": [], "usage": _usage(reply, body)}
    yield "[DONE]"


# -- the command line ---------------------------------------------------------

def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve a scripted OpenAI-compatible chat endpoint on loopback.")
    parser.add_argument("--script", type=Path, required=True, help="JSON file with a list of steps")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0 = a free one)")
    parser.add_argument("--no-tools", action="store_true", help="reject requests with tools, like endpoints without tool support")
    parser.add_argument("--response-format", choices=[m for m in RESPONSE_FORMATS if m], default=None,
                        help="structured outputs like this kind of server (default: the field is ignored)")
    args = parser.parse_args(argv)
    steps = steps_from_json(json.loads(args.script.read_text(encoding="utf-8")))
    with LLMServer(steps, tools_supported=not args.no_tools, response_format=args.response_format,
                   port=args.port) as server:
        print(f"OPENAI_BASE_URL={server.base_url}", flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
