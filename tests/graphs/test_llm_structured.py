"""Structured outputs and the context window in the LLM client: the real openai SDK against the scripted server,
which refuses or honours ``response_format`` as OpenAI/vLLM and llama-cpp-python's server do."""

from __future__ import annotations

import json

import pytest

from dsagent.graphs.llm import LLMClient
from dsagent.graphs.review import REVIEW_SCHEMA
from dsagent.settings import Settings
from dsagent.testing.llm_server import LLMServer, Reply

ASK = [{"role": "system", "content": "Review this."}, {"role": "user", "content": "The mean is 2."}]
ACCEPT = '{"verdict": "accept", "findings": []}'


def client_for(server: LLMServer, **settings) -> LLMClient:
    values = {"llm_backoff_initial": 0.01, "llm_backoff_max": 0.05, "llm_timeout": 5.0, "llm_max_retries": 3,
              "llm_model": "scripted-model", **settings}
    return LLMClient(Settings(**values), base_url=server.base_url, api_key="sk-test-0123456789")


class Events(list):
    async def __call__(self, kind, data):
        self.append((kind, data))


@pytest.mark.parametrize("stream", [False, True])
async def test_json_schema_goes_to_an_endpoint_that_takes_it(stream):
    with LLMServer([Reply(ACCEPT), Reply(ACCEPT)], response_format="openai") as server:
        async with client_for(server, llm_stream=stream) as client:
            for _ in range(2):
                reply = await client.chat(ASK, role="reviewer", schema=("review", REVIEW_SCHEMA))
                assert json.loads(reply.text)["verdict"] == "accept"
        server.assert_consumed()
    sent = [r.response_format for r in server.requests]
    assert sent == [{"type": "json_schema", "json_schema": {"name": "review", "schema": REVIEW_SCHEMA}}] * 2


async def test_llama_cpp_python_refuses_json_schema_with_a_500_and_json_object_is_used_from_then_on():
    events = Events()
    with LLMServer([Reply(ACCEPT), Reply(ACCEPT)], response_format="llama_cpp") as server:
        async with client_for(server) as client:
            await client.chat(ASK, role="reviewer", schema=("review", REVIEW_SCHEMA), on_event=events)
            await client.chat(ASK, role="reviewer", schema=("review", REVIEW_SCHEMA), on_event=events)
            assert client.structured_style("scripted-model") == "json_object"
        server.assert_consumed()
    assert [r.response_format["type"] for r in server.requests] == ["json_schema", "json_object", "json_object"]
    assert server.requests[1].response_format["schema"] == REVIEW_SCHEMA
    assert [k for k, _ in events] == ["llm_fallback"]  # found once: no retries with backoff on the 500
    assert events[0][1]["structured"] == "json_object" and "json_object" in events[0][1]["reason"]


async def test_an_endpoint_without_structured_outputs_gets_plain_requests_and_no_tool_request_carries_a_format():
    with LLMServer([Reply("accept, I think"), Reply("again")], response_format="reject") as server:
        async with client_for(server) as client:
            first = await client.chat(ASK, role="reviewer", schema=("review", REVIEW_SCHEMA))
            await client.chat(ASK, role="reviewer", schema=("review", REVIEW_SCHEMA))
        server.assert_consumed()
    assert first.text == "accept, I think"  # parsed as text by the caller, as before
    kinds = [(r.response_format or {}).get("type") for r in server.requests]
    assert kinds == ["json_schema", "json_object", None, None]


async def test_forced_style_and_the_scripted_server_catches_a_reply_that_breaks_the_schema():
    with LLMServer([Reply('{"verdict": "maybe"}')], response_format="llama_cpp") as server:
        async with client_for(server, llm_structured_outputs="json_object") as client:
            await client.chat(ASK, role="reviewer", schema=("review", REVIEW_SCHEMA))
        with pytest.raises(AssertionError, match="not a JSON object|breaks"):
            server.assert_consumed()
    assert server.requests[0].response_format == {"type": "json_object", "schema": REVIEW_SCHEMA}


async def test_a_prompt_too_long_for_the_context_is_cut_in_the_middle_and_the_reply_gets_room():
    events = Events()
    long = "HEAD " + "row of the profile\n" * 2000 + " TAIL"
    with LLMServer([Reply("ok")]) as server:
        async with client_for(server, llm_context_tokens=2048) as client:
            await client.chat([{"role": "system", "content": "Be brief."}, {"role": "user", "content": long}],
                              role="planner", on_event=events)
        server.assert_consumed()
    body = server.requests[0].body
    sent = body["messages"][1]["content"]
    assert body["max_tokens"] == 512 and sent.startswith("HEAD ") and sent.endswith(" TAIL")
    assert "characters left out to fit the model's context" in sent
    assert len(json.dumps(body["messages"])) // 3 <= 2048 - 512
    kind, data = events[0]
    assert kind == "llm_prompt_trimmed" and data["tokens_after"] <= data["limit"] < data["tokens_before"]
