"""The LLM client: the real openai SDK against the scripted server over loopback HTTP."""

from __future__ import annotations

import asyncio
import json
import pickle
import socket
import time

import pytest

from dsagent.errors import LLMRequestError, LLMUnavailable, SettingsError
from dsagent.graphs.llm import ROLE_HEADER, LLMClient, TokenUsage, UsageMeter, tool_message
from dsagent.settings import Settings
from dsagent.testing import llm_server
from dsagent.testing.llm_server import Fault, LLMServer, Reply, ToolCall

SECRET = "sk-test-0123456789abcdef"
RUN_CODE = {
    "type": "function",
    "function": {
        "name": "run_code",
        "description": "Run Python in the task's kernel.",
        "parameters": {"type": "object", "properties": {"code": {"type": "string"}}, "required": ["code"]},
    },
}
ASK = [{"role": "system", "content": "You are a data analyst."}, {"role": "user", "content": "Mean of [1, 2, 3]?"}]


@pytest.fixture
def server():
    with LLMServer() as s:
        yield s


def client_for(server: LLMServer | str, **settings) -> LLMClient:
    """A client with test-sized timeouts and backoff (the real defaults wait seconds)."""
    values = {"llm_backoff_initial": 0.01, "llm_backoff_max": 0.05, "llm_timeout": 5.0, "llm_max_retries": 3,
              "llm_model": "scripted-model", "llm_stream": True, "llm_tool_mode": "auto", **settings}
    base_url = server if isinstance(server, str) else server.base_url
    return LLMClient(Settings(**values), base_url=base_url, api_key=SECRET)


class Recorder:
    """Collects hook calls; async, to check that run_hook awaits them."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    async def __call__(self, *args) -> None:
        await asyncio.sleep(0)
        self.calls.append(args)

    def kinds(self) -> list[str]:
        return [c[0] for c in self.calls]


@pytest.mark.parametrize("stream", [False, True])
async def test_plain_reply_and_what_was_sent(server, stream):
    server.add(Reply("The mean is 2.", prompt_tokens=21, completion_tokens=5))
    async with client_for(server) as llm:
        reply = await llm.chat(ASK, role="planner", stream=stream)
    assert (reply.text, reply.tool_calls, reply.finish_reason) == ("The mean is 2.", (), "stop")
    assert reply.usage == TokenUsage(21, 5) and not reply.usage.estimated
    assert (reply.model, reply.role, reply.mode) == ("scripted-model", "planner", "native")
    sent = server.requests[0]
    assert sent.messages == ASK and sent.model == "scripted-model" and sent.role == "planner"
    assert sent.api_key == SECRET and sent.tools == [] and sent.stream is stream
    assert ROLE_HEADER == llm_server.ROLE_HEADER
    server.assert_consumed()


async def test_streamed_tokens_reach_the_callback_in_order(server):
    text = "The mean of the column is 4.25; the median is 4.0 and there are no nulls."
    server.add(Reply(text, chunk_size=3))
    tokens: list[str] = []
    async with client_for(server) as llm:
        reply = await llm.chat(ASK, on_token=tokens.append)
    assert "".join(tokens) == text == reply.text
    assert tokens == [text[i:i + 3] for i in range(0, len(text), 3)]

    server.add(Reply("async hooks too", chunk_size=5))
    hook = Recorder()
    async with client_for(server) as llm:
        await llm.chat(ASK, on_token=hook)
    assert [c[0] for c in hook.calls] == ["async", " hook", "s too"]


@pytest.mark.parametrize("stream", [False, True])
async def test_tool_calls_are_parsed_and_the_history_round_trips(server, stream):
    code = "import pandas as pd\ndf = pd.read_csv('data.csv')\nprint(df.describe())"
    server.add(Reply("Profiling first.", tool_calls=[ToolCall("run_code", {"code": code}, id="call_a"),
                                                     ToolCall("list_files", {}, id="call_b")]),
               Reply("Done."))
    async with client_for(server) as llm:
        reply = await llm.chat(ASK, role="coder", tools=[RUN_CODE], stream=stream)
        assert reply.finish_reason == "tool_calls" and reply.text == "Profiling first."
        assert [(c.id, c.name, c.arguments, c.ok) for c in reply.tool_calls] == [
            ("call_a", "run_code", {"code": code}, True), ("call_b", "list_files", {}, True)]
        history = [*ASK, reply.assistant_message(), tool_message("call_a", "count 3"), tool_message("call_b", "[]")]
        final = await llm.chat(history, role="coder", tools=[RUN_CODE], stream=stream)
    assert final.text == "Done."
    sent = server.requests[1].messages
    assert sent[2]["tool_calls"][0]["function"] == {"name": "run_code", "arguments": json.dumps({"code": code})}
    assert sent[3] == {"role": "tool", "tool_call_id": "call_a", "content": "count 3"}
    assert server.requests[0].tool_names == ["run_code"]


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("raw, problem", [
    ('{"code": "print(1)"', "not valid JSON"),
    ('["print(1)"]', "must be a JSON object, not list"),
])
async def test_malformed_tool_arguments_are_kept_as_data(server, stream, raw, problem):
    server.add(Reply(tool_calls=[ToolCall("run_code", raw, id="call_x"), ToolCall("run_code", {"code": "1"})]))
    async with client_for(server) as llm:
        reply = await llm.chat(ASK, tools=[RUN_CODE], stream=stream)
    bad, good = reply.tool_calls
    assert not bad.ok and bad.arguments is None and bad.raw_arguments == raw
    assert problem in bad.error and "run_code" in bad.error
    assert good.ok and good.arguments == {"code": "1"}
    # the bad call still goes back into the history verbatim, so the model sees what it sent
    assert reply.assistant_message()["tool_calls"][0]["function"]["arguments"] == raw


async def test_429_is_retried_after_retry_after(server):
    server.add(Fault.http(429, retry_after=0.4), Reply("ok"))
    events = Recorder()
    started = time.monotonic()
    async with client_for(server) as llm:
        reply = await llm.chat(ASK, on_event=events)
    assert reply.text == "ok"
    assert time.monotonic() - started >= 0.4  # backoff alone would be <= 0.05 s
    assert events.kinds() == ["llm_retry"]
    retry = events.calls[0][1]
    assert (retry["reason"], retry["status"], retry["delay"], retry["attempt"]) == ("rate_limit", 429, 0.4, 1)
    assert len(server.requests) == 2


async def test_500_every_time_gives_a_clear_error_after_the_retries(server):
    server.add(*[Fault.http(500, f"upstream failed for key {SECRET}") for _ in range(3)])
    events = Recorder()
    async with client_for(server, llm_max_retries=2) as llm:
        with pytest.raises(LLMUnavailable) as info:
            await llm.chat(ASK, role="reviewer", on_event=events)
    err = info.value
    assert (err.reason, err.status, err.attempts, err.role) == ("server_error", 500, 3, "reviewer")
    assert err.endpoint == server.base_url and err.model == "scripted-model"
    text = str(err)
    assert server.base_url in text and "'scripted-model'" in text and "3 attempts" in text and "hint:" in text
    assert SECRET not in text and "***" in text
    assert SECRET not in json.dumps([c[1] for c in events.calls])
    assert events.kinds() == ["llm_retry", "llm_retry"] and len(server.requests) == 3
    assert pickle.loads(pickle.dumps(err)).reason == "server_error"


async def test_timeouts_are_retried_then_fail_clearly(server):
    server.add(Fault.hang(30), Fault.hang(30), Reply("slow but fine"))
    async with client_for(server, llm_timeout=0.3, llm_max_retries=2) as llm:
        assert (await llm.chat(ASK)).text == "slow but fine"

    server.add(Fault.hang(30), Fault.hang(30))
    started = time.monotonic()
    async with client_for(server, llm_timeout=0.3, llm_max_retries=1) as llm:
        with pytest.raises(LLMUnavailable) as info:
            await llm.chat(ASK)
    assert info.value.reason == "timeout" and "llm_timeout=0.3 s" in str(info.value)
    assert "DSAGENT_LLM_TIMEOUT" in info.value.hint
    assert time.monotonic() - started < 10  # two 0.3 s timeouts, not the 30 s hang


async def test_a_stream_cut_midway_is_retried_and_says_so(server):
    server.add(Fault.drop(after_chunks=3), Reply("complete answer"))
    tokens: list[str] = []
    events = Recorder()
    async with client_for(server) as llm:
        reply = await llm.chat(ASK, on_token=tokens.append, on_event=events)
    assert reply.text == "complete answer" and "".join(tokens).endswith("complete answer")
    assert events.calls[0][1]["restarted_stream"] is True and events.calls[0][1]["reason"] == "connection"


async def test_endpoint_down_gives_a_clear_error():
    with socket.socket() as sock:  # a port that nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    base_url = f"http://127.0.0.1:{port}/v1"
    async with client_for(base_url, llm_max_retries=1) as llm:
        with pytest.raises(LLMUnavailable) as info:
            await llm.chat(ASK, role="coder")
    err = info.value
    assert err.reason == "connection" and err.attempts == 2
    assert str(err).startswith(f"cannot connect to the LLM endpoint {base_url}")
    assert "OPENAI_BASE_URL" in err.hint


@pytest.mark.parametrize("status, reason, hint_part", [
    (400, "bad_request", "llm_model"),
    (401, "auth", "OPENAI_API_KEY"),
    (403, "permission", "llm_model"),
    (404, "not_found", "models this endpoint offers: scripted-model"),
])
async def test_client_errors_are_not_retried(server, status, reason, hint_part):
    server.add(Fault.http(status, f"refused; your key was {SECRET}"))
    async with client_for(server) as llm:
        with pytest.raises(LLMRequestError) as info:
            await llm.chat(ASK)
    err = info.value
    assert (err.status, err.reason) == (status, reason) and hint_part in err.hint
    assert SECRET not in str(err) and f"HTTP {status}" in str(err)
    assert len(server.requests) == 1


async def test_quota_exhausted_and_very_long_retry_after_fail_at_once(server):
    server.add(Fault.http(429, "You exceeded your current quota", code="insufficient_quota"),
               Fault.http(429, retry_after=3600))
    async with client_for(server) as llm:
        with pytest.raises(LLMRequestError, match="quota") as info:
            await llm.chat(ASK)
        assert "billing" in info.value.hint
        with pytest.raises(LLMUnavailable, match="asks to wait 3600 s"):
            await llm.chat(ASK)
    assert len(server.requests) == 2


async def test_endpoint_without_tools_switches_to_fenced_code():
    with LLMServer(tools_supported=False) as server:
        server.add(Reply("Let me compute it.\n```python\nimport statistics\nprint(statistics.mean([1, 2, 3]))\n```\n"),
                   Reply("The mean is 2.0."))
        events = Recorder()
        async with client_for(server) as llm:
            reply = await llm.chat(ASK, role="coder", tools=[RUN_CODE], on_event=events)
            assert reply.mode == "fenced" and reply.text == "Let me compute it."
            (call,) = reply.tool_calls
            assert call.name == "run_code" and call.arguments == {
                "code": "import statistics\nprint(statistics.mean([1, 2, 3]))"}
            history = [*ASK, reply.assistant_message(), tool_message(call.id, "2.0")]
            final = await llm.chat(history, role="coder", tools=[RUN_CODE], on_event=events)
        assert final.text == "The mean is 2.0." and final.tool_calls == ()
        assert events.kinds() == ["llm_fallback"] and "tool" in events.calls[0][1]["reason"]
        rejected, first, second = server.requests
        assert rejected.tools and rejected.step is None
        assert not first.tools and "```python" in first.messages[0]["content"]
        assert "Run Python in the task's kernel." in first.messages[0]["content"]
        # the tool-calling history was rewritten into plain messages
        assert not second.tools and [m["role"] for m in second.messages] == ["system", "user", "assistant", "user"]
        assert "```python\nimport statistics" in second.messages[2]["content"]
        assert second.messages[3]["content"] == "Output of the code:\n2.0"
        server.assert_consumed()


async def test_forced_fenced_mode_never_sends_tools(server):
    server.add(Reply("```python\nprint('hi')\n```"))
    async with client_for(server, llm_tool_mode="fenced") as llm:
        reply = await llm.chat(ASK, tools=[RUN_CODE])
    assert reply.mode == "fenced" and reply.tool_calls[0].arguments == {"code": "print('hi')"}
    assert server.requests[0].tools == [] and len(server.requests) == 1


async def test_native_mode_reports_a_tool_refusal_instead_of_switching():
    with LLMServer(tools_supported=False) as server:
        async with client_for(server, llm_tool_mode="native") as llm:
            with pytest.raises(LLMRequestError, match="llm_tool_mode=fenced"):
                await llm.chat(ASK, tools=[RUN_CODE])


async def test_models_per_role_and_usage_summed_per_role(server):
    server.add(Reply("review", role="reviewer", prompt_tokens=50, completion_tokens=7),
               Reply("plan", role="planner", prompt_tokens=10, completion_tokens=2),
               Reply("code", role="coder", prompt_tokens=30, completion_tokens=20),
               Reply("plan 2", role="planner", prompt_tokens=12, completion_tokens=3))
    async with client_for(server, llm_model="base-model", llm_model_coder="code-model") as llm:
        texts = [(await llm.chat(ASK, role=r)).text for r in ("planner", "coder", "planner", "reviewer")]
    assert texts == ["plan", "code", "plan 2", "review"]  # each role got its own script
    assert [r.model for r in server.requests] == ["base-model", "code-model", "base-model", "base-model"]
    usage = llm.usage
    assert usage.by_role["planner"] == TokenUsage(22, 5) and usage.calls["planner"] == 2
    assert usage.by_role["coder"].total_tokens == 50 and usage.total == TokenUsage(102, 32)
    saved = json.loads(json.dumps(usage.to_dict()))
    assert saved["total"] == {"prompt_tokens": 102, "completion_tokens": 32, "total_tokens": 134,
                              "estimated": False, "calls": 4}
    assert UsageMeter.from_dict(saved) == usage


def test_retry_after_forms():
    from datetime import UTC, datetime, timedelta
    from email.utils import format_datetime

    from dsagent.graphs.llm_failures import retry_after

    assert retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert retry_after({"retry-after": "2"}) == 2.0
    in_30s = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    assert 25 < retry_after({"retry-after": in_30s}) <= 30
    assert retry_after({"retry-after": "soon"}) is None and retry_after({}) is None


def test_settings_checks(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(LLMRequestError, match="no API key") as info:
        LLMClient(Settings())
    assert info.value.reason == "no_api_key" and "OPENAI_API_KEY" in info.value.hint
    with pytest.raises(SettingsError, match="llm_tool_mode"):
        LLMClient(Settings(llm_tool_mode="maybe"), base_url="http://127.0.0.1:9/v1")
    # a local endpoint needs no key; credentials in the URL never show
    llm = LLMClient(Settings(), base_url="http://user:pw@127.0.0.1:9/v1?x=1")
    assert llm.endpoint == "http://127.0.0.1:9/v1"
