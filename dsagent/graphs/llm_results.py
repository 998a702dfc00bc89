"""What one model turn gives back, as typed values: the reply (``LLMResponse``), its tool calls (``ToolCall``, bad
arguments kept as data), its tokens (``TokenUsage``) and the tokens summed per role over a run (``UsageMeter``).

``graphs/llm.py``'s client makes them; the agents read them and persist ``UsageMeter.to_dict()`` with their run.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["LLMResponse", "TokenUsage", "ToolCall", "ToolMode", "UsageMeter", "tool_message"]

#: how the tools reached the model: as tools (``native``) or as fenced code blocks in the text (``fenced``)
ToolMode = Literal["native", "fenced"]


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
