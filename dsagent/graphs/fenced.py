"""Tool calling for endpoints without tools: code travels in ```python blocks.

The graphs keep one history in OpenAI's tool-calling shape. For an endpoint
that cannot take ``tools`` (many local servers), ``fenced_history`` rewrites
that history into plain messages and adds instructions, and
``extract_code_blocks`` turns the model's answer back into code to run; the
LLM client wraps each block as a call of the code tool, so nothing above it
knows which mode was used.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["FENCED_INSTRUCTIONS", "extract_code_blocks", "fenced_history"]

FENCED_INSTRUCTIONS = (
    "You cannot call tools here. To run Python, write it in a ```python fenced block: "
    "it runs in the Jupyter kernel of this task and the next message shows you its output. "
    "Do everything (reading files, running shell commands) from Python. "
    "When you are finished, answer without a ```python block."
)
_CODE_BLOCK = re.compile(r"```(?:python3?|py)[ \t]*\n(.*?)```", re.DOTALL | re.IGNORECASE)


def extract_code_blocks(text: str) -> tuple[str, list[str]]:
    """Split a reply into its prose and its complete ```python blocks (an unclosed block stays prose)."""
    blocks = [m.group(1).strip("\n") for m in _CODE_BLOCK.finditer(text)]
    prose = _CODE_BLOCK.sub("", text).strip()
    return prose, [b for b in blocks if b.strip()]


def fenced_history(messages: Sequence[Mapping[str, Any]], tools: Sequence[Mapping[str, Any]],
                   code_tool: str) -> list[dict[str, Any]]:
    """Rewrite an OpenAI tool-calling history for an endpoint without tools.

    Code-tool calls become ```python blocks in the assistant's text, other calls a
    sentence, ``tool`` results user messages; consecutive user messages merge
    (some chat templates insist on alternating roles). The instructions go into
    the system message.
    """
    names = {c.get("id"): (c.get("function") or {}).get("name") for m in messages for c in m.get("tool_calls") or []}
    out: list[dict[str, Any]] = []
    for message in messages:
        role = message.get("role")
        if role == "assistant" and message.get("tool_calls"):
            out.append({"role": "assistant", "content": _calls_as_text(message, code_tool)})
        elif role == "tool":
            name = names.get(message.get("tool_call_id")) or "the tool"
            label = "Output of the code" if name == code_tool else f"Result of {name}"
            out.append({"role": "user", "content": f"{label}:\n{_text(message.get('content'))}"})
        else:
            out.append(dict(message))
        if len(out) > 1 and out[-1]["role"] == out[-2]["role"] == "user" and all(
                isinstance(m.get("content"), str) for m in out[-2:]):
            out[-2:] = [{"role": "user", "content": out[-2]["content"] + "\n\n" + out[-1]["content"]}]
    instructions = FENCED_INSTRUCTIONS + _describe_code_tool(tools, code_tool)
    if out and out[0].get("role") in ("system", "developer") and isinstance(out[0].get("content"), str):
        out[0] = {**out[0], "content": out[0]["content"] + "\n\n" + instructions}
    else:
        out.insert(0, {"role": "system", "content": instructions})
    return out


def _describe_code_tool(tools: Sequence[Mapping[str, Any]], code_tool: str) -> str:
    for tool in tools:
        function = tool.get("function") or {}
        if function.get("name") == code_tool and function.get("description"):
            return f" About running code: {function['description']}"
    return ""


def _calls_as_text(message: Mapping[str, Any], code_tool: str) -> str:
    parts = [_text(message.get("content"))] if message.get("content") else []
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        name, raw = function.get("name", ""), function.get("arguments") or ""
        code = _code_argument(raw)
        if name == code_tool and code is not None:
            parts.append(f"```python\n{code}\n```")
        else:
            parts.append(f"(called {name} with {raw})")
    return "\n\n".join(parts)


def _code_argument(raw: str) -> str | None:
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    code = value.get("code") if isinstance(value, dict) else None
    return code if isinstance(code, str) else None


def _text(content: Any) -> str:
    """Message content as text (content-part lists are joined)."""
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return "" if content is None else str(content)
