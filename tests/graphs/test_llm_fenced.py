"""Fenced-code mode: history rewriting and code extraction (pure functions, no server needed)."""

from __future__ import annotations

import json

from dsagent.graphs.fenced import FENCED_INSTRUCTIONS, extract_code_blocks, fenced_history


def call(call_id: str, name: str, arguments: dict | str) -> dict:
    raw = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": raw}}


def test_extract_code_blocks_keeps_prose_and_skips_unclosed_blocks():
    text = "First:\n```python\nx = 1\n```\nthen\n```py\nprint(x)\n```\n```bash\nls\n```\n```python\nunfinished("
    prose, blocks = extract_code_blocks(text)
    assert blocks == ["x = 1", "print(x)"]
    assert prose.startswith("First:") and "then" in prose and "```bash" in prose and "unfinished(" in prose


def test_fenced_history_rewrites_tool_calls_and_results():
    history = [
        {"role": "user", "content": "Profile data.csv"},
        {"role": "assistant", "content": "Looking around.",
         "tool_calls": [call("a", "list_files", {}), call("b", "run_code", {"code": "print(2)"})]},
        {"role": "tool", "tool_call_id": "a", "content": "data.csv"},
        {"role": "tool", "tool_call_id": "b", "content": [{"type": "text", "text": "2"}]},
        {"role": "assistant", "content": None, "tool_calls": [call("c", "run_code", '{"code": broken')]},
        {"role": "tool", "tool_call_id": "c", "content": "error: bad arguments"},
    ]
    out = fenced_history(history, [], "run_code")
    assert [m["role"] for m in out] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert out[0]["content"] == FENCED_INSTRUCTIONS  # inserted when the history has no system message
    assert out[2]["content"] == "Looking around.\n\n(called list_files with {})\n\n```python\nprint(2)\n```"
    assert out[3]["content"] == "Result of list_files:\ndata.csv\n\nOutput of the code:\n2"  # merged
    assert out[4]["content"] == '(called run_code with {"code": broken)'  # bad JSON shown as it was sent
    assert all("tool_calls" not in m for m in out)
    assert history[1]["tool_calls"]  # the caller's history is left alone
