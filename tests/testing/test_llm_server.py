"""The scripted OpenAI-compatible server: wire format on raw HTTP, and the real SDK against it."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import httpx
import openai
import pytest

from dsagent.testing.llm_server import ROLE_HEADER, Fault, LLMServer, Reply, ToolCall, steps_from_json

CHAT = {"model": "m1", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def server():
    with LLMServer() as s:
        yield s


def sse_payloads(response: httpx.Response) -> list[str]:
    lines = [line for line in response.text.split("\n") if line]
    assert all(line.startswith("data: ") for line in lines), lines
    return [line.removeprefix("data: ") for line in lines]


def test_streamed_tool_calls_look_like_openai(server):
    server.add(Reply("ok", tool_calls=[ToolCall("run_code", {"code": "print(1)"}, id="call_1"),
                                       ToolCall("read_file", {"path": "a.csv"})], chunk_size=2))
    body = {**CHAT, "stream": True, "stream_options": {"include_usage": True}, "tools": [{"type": "function"}]}
    response = httpx.post(f"{server.base_url}/chat/completions", json=body)
    assert response.headers["content-type"] == "text/event-stream"
    payloads = sse_payloads(response)
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(p) for p in payloads[:-1]]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"} and len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    deltas = [d for c in chunks for ch in c["choices"] for d in ch["delta"].get("tool_calls", [])]
    heads = [d for d in deltas if "id" in d]
    assert [(h["index"], h["type"], h["function"]) for h in heads] == [
        (0, "function", {"name": "run_code", "arguments": ""}), (1, "function", {"name": "read_file", "arguments": ""})]
    assert heads[0]["id"] == "call_1" and heads[1]["id"].startswith("call_")
    for index, expected in ((0, {"code": "print(1)"}), (1, {"path": "a.csv"})):
        fragments = [d["function"]["arguments"] for d in deltas if d["index"] == index and "id" not in d]
        assert len(fragments) > 1 and all(set(d) == {"index", "function"} for d in deltas if "id" not in d)
        assert json.loads("".join(fragments)) == expected
    finish = [ch["finish_reason"] for c in chunks for ch in c["choices"] if ch["finish_reason"]]
    assert finish == ["tool_calls"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] > 0
    assert all(c["usage"] is None for c in chunks[:-1])


def test_usage_chunk_only_when_asked_and_plain_json_answers(server):
    server.add(Reply("hello"), Reply("hello", prompt_tokens=3, completion_tokens=1, finish_reason="length"))
    streamed = [json.loads(p) for p in sse_payloads(httpx.post(f"{server.base_url}/chat/completions",
                                                               json={**CHAT, "stream": True}))[:-1]]
    assert all("usage" not in c and c["choices"] for c in streamed)
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in streamed) == "hello"
    whole = httpx.post(f"{server.base_url}/chat/completions", json=CHAT).json()
    assert whole["object"] == "chat.completion" and whole["model"] == "m1"
    assert whole["choices"][0]["message"] == {"role": "assistant", "content": "hello", "refusal": None}
    assert whole["choices"][0]["finish_reason"] == "length"
    assert whole["usage"] == {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}


def test_errors_have_openai_bodies_and_retry_after(server):
    server.add(Fault.http(429, retry_after=1.5), Fault.http(400, "bad 'messages'", code="invalid_value"))
    limited = httpx.post(f"{server.base_url}/chat/completions", json=CHAT)
    assert limited.status_code == 429 and limited.headers["retry-after"] == "1.5"
    assert limited.json()["error"]["type"] == "rate_limit_error"
    bad = httpx.post(f"{server.base_url}/chat/completions", json=CHAT)
    assert bad.status_code == 400
    assert bad.json() == {"error": {"message": "bad 'messages'", "type": "invalid_request_error",
                                    "param": None, "code": "invalid_value"}}


def test_models_route_and_unknown_routes(server):
    server.add(Reply("x", model="special"))
    ids = [m["id"] for m in httpx.get(f"{server.base_url}/models").json()["data"]]
    assert ids == ["scripted-model", "special"]
    assert httpx.get(f"{server.base_url}/nope").status_code == 404


def test_steps_match_role_and_model_and_leftovers_are_reported(server):
    server.add(Reply("for the reviewer", role="reviewer"), Reply("for m2", model="m2"), Reply("anyone"))
    def post(role: str, model: str) -> httpx.Response:
        return httpx.post(f"{server.base_url}/chat/completions", json={**CHAT, "model": model},
                          headers={ROLE_HEADER: role})

    assert post("coder", "m2").json()["choices"][0]["message"]["content"] == "for m2"
    assert post("reviewer", "m1").json()["choices"][0]["message"]["content"] == "for the reviewer"
    assert post("coder", "m1").json()["choices"][0]["message"]["content"] == "anyone"
    exhausted = post("planner", "m1")
    assert exhausted.status_code == 400 and "no script step left for role='planner'" in exhausted.text
    assert [r.role for r in server.requests] == ["coder", "reviewer", "coder", "planner"]
    assert [r.role for r in server.requests_for("coder")] == ["coder", "coder"]
    with pytest.raises(AssertionError, match="found no script step"):
        server.assert_consumed()


def test_assert_consumed_reports_unused_steps(server):
    server.add(Reply("never asked for"))
    with pytest.raises(AssertionError, match="1 script step"):
        server.assert_consumed()


def test_tools_rejected_like_endpoints_without_tool_support():
    with LLMServer([Reply("plain")], tools_supported=False) as server:
        refused = httpx.post(f"{server.base_url}/chat/completions", json={**CHAT, "tools": [{"type": "function"}]})
        assert refused.status_code == 400 and "tool" in refused.json()["error"]["message"]
        assert server.remaining == [Reply("plain")]  # a refusal uses no step
        assert httpx.post(f"{server.base_url}/chat/completions", json=CHAT).json()["choices"][0]["message"]["content"] == "plain"
        assert len(server.requests) == 2


def test_drop_and_hang(server):
    server.add(Fault.drop(), Fault.drop(after_chunks=2), Fault.hang(30))
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.post(f"{server.base_url}/chat/completions", json=CHAT)
    with pytest.raises(httpx.RemoteProtocolError):  # the chunked body ends too early
        httpx.post(f"{server.base_url}/chat/completions", json={**CHAT, "stream": True})
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.base_url}/chat/completions", json=CHAT, timeout=0.3)


def test_close_releases_a_hanging_request_at_once():
    server = LLMServer([Fault.hang(60)]).start()
    errors: list[BaseException] = []

    def call() -> None:
        try:
            httpx.post(f"{server.base_url}/chat/completions", json=CHAT, timeout=30)
        except httpx.HTTPError as exc:
            errors.append(exc)

    thread = threading.Thread(target=call)
    thread.start()
    while not server.requests:
        time.sleep(0.01)
    started = time.monotonic()
    server.close()
    thread.join(timeout=10)
    assert not thread.is_alive() and errors and time.monotonic() - started < 5


def test_the_sync_openai_sdk_works_too(server):
    server.add(Reply(tool_calls=[ToolCall("run_code", {"code": "2*3"})]))
    client = openai.OpenAI(base_url=server.base_url, api_key="k", max_retries=0)
    stream = client.chat.completions.create(model="m1", messages=CHAT["messages"], stream=True)
    args = "".join(tc.function.arguments or "" for chunk in stream for tc in chunk.choices[0].delta.tool_calls or [])
    assert json.loads(args) == {"code": "2*3"}
    client.close()


def test_scripts_from_json_and_the_command_line(tmp_path):
    data = [{"content": "hi", "role": "planner"},
            {"tool_calls": [{"name": "run_code", "arguments": {"code": "1"}}]},
            {"fault": "http", "status": 429, "retry_after": 0.1},
            {"fault": "hang", "seconds": 2},
            {"fault": "drop", "after_chunks": 1}]
    steps = steps_from_json(data)
    assert steps[0] == Reply("hi", role="planner")
    assert steps[1] == Reply(tool_calls=(ToolCall("run_code", {"code": "1"}),))
    assert steps[2:] == [Fault.http(429, retry_after=0.1), Fault.hang(2), Fault.drop(after_chunks=1)]
    with pytest.raises(ValueError, match="unknown fault kind"):
        steps_from_json([{"fault": "explode"}])

    script = tmp_path / "script.json"
    script.write_text(json.dumps([{"content": "from the command line"}]))
    proc = subprocess.Popen([sys.executable, "-m", "dsagent.testing.llm_server", "--script", str(script)],
                            stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline().strip()
        assert line.startswith("OPENAI_BASE_URL=http://127.0.0.1:")
        answer = httpx.post(line.split("=", 1)[1] + "/chat/completions", json=CHAT, timeout=10).json()
        assert answer["choices"][0]["message"]["content"] == "from the command line"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
