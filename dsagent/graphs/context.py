"""The live objects one agent run's graph uses, and its budgets.

LangGraph passes an ``AgentContext`` to every node (``runtime.context``); it is
not checkpointed (a resumed run builds a new one), so state stays plain data.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from dsagent.artifacts.recorder import RunRecorder
from dsagent.graphs.llm import LLMClient
from dsagent.secrets import Scrubber
from dsagent.graphs.state import AgentState
from dsagent.graphs.tools import Toolbox
from dsagent.settings import Settings

__all__ = ["AgentContext", "Approver", "Budget"]

StepHook = Callable[[str, dict[str, Any]], None | Awaitable[None]]
# gets {"tool", "arguments"}; returns True/False or {"approved": bool, "reason": str} (may be async)
Approver = Callable[[dict[str, Any]], Any]


@dataclass(frozen=True)
class Budget:
    """Limits of one agent run; the first one reached ends the run ``failed`` (never a loop)."""

    max_steps: int = 20  # model turns of the acting agent
    max_revisions: int = 2  # times the reviewer may send the work back
    max_seconds: float = 900.0  # wall time of the whole run
    max_tokens: int = 200_000  # prompt + completion tokens of all roles

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> "Budget":
        values = {
            "max_steps": settings.agent_max_steps,
            "max_revisions": settings.agent_max_revisions,
            "max_seconds": settings.agent_max_seconds,
            "max_tokens": settings.agent_max_tokens,
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def exceeded(self, state: AgentState, tokens_used: int, started_at: float) -> str | None:
        """Why the run must stop now, or None. Time and tokens count from ``started_at`` (this attempt: a
        resumed run gets its budget of time and tokens again, not its steps)."""
        if state.get("steps", 0) >= self.max_steps:
            return f"budget exhausted: {self.max_steps} agent steps (agent_max_steps)"
        elapsed = time.time() - started_at
        if elapsed >= self.max_seconds:
            return f"budget exhausted: {self.max_seconds:g} s of wall time (agent_max_seconds)"
        if tokens_used >= self.max_tokens:
            return f"budget exhausted: {tokens_used} tokens used, the limit is {self.max_tokens} (agent_max_tokens)"
        return None


@dataclass
class AgentContext:
    """What the nodes of one run share: the model, the kernel (through tools), the recorder, the limits."""

    llm: LLMClient
    toolbox: Toolbox
    recorder: RunRecorder
    scrubber: Scrubber
    budget: Budget = field(default_factory=Budget)
    on_step: StepHook | None = None
    started_at: float = field(default_factory=time.time)  # this attempt (a resumed run starts a new one)
    approve: "Approver | None" = None  # asked before each code execution when set (--approve)

    async def step(self, kind: str, payload: dict[str, Any], *, defer: bool = False) -> None:
        """One visible step: an event in the store (the dashboard follows these) and the caller's hook.

        ``defer``: the event rides with the next write (a tool call that runs a cell at once).
        """
        payload = self.scrubber.value(payload)
        await self.recorder.event(f"agent_{kind}", payload, defer=defer)
        if self.on_step is not None:
            result = self.on_step(kind, payload)
            if isinstance(result, Awaitable):
                await result

    def token_relay(self, role: str) -> "TokenRelay":
        """An ``on_token`` hook that writes the model's streamed text to the run's events in slices."""
        return TokenRelay(self, role)

    async def on_llm_event(self, kind: str, data: dict[str, Any]) -> None:
        """Retries and fallbacks of the LLM client become events, so a slow endpoint explains itself."""
        await self.step(kind, data)


class TokenRelay:
    """Streams a model's tokens into ``agent_tokens`` events: one write per ``interval`` seconds of
    generation, not one per token (a store write costs ~8 ms); the rest rides with the next write."""

    def __init__(self, ctx: AgentContext, role: str, interval: float = 0.5) -> None:
        self.ctx, self.role, self.interval = ctx, role, interval
        self._buffer: list[str] = []
        self._last = time.monotonic()

    async def __call__(self, text: str) -> None:
        self._buffer.append(text)
        if time.monotonic() - self._last >= self.interval:
            await self.flush(defer=False)

    async def flush(self, *, defer: bool = True) -> None:
        self._last = time.monotonic()
        if not self._buffer:
            return
        text, self._buffer = "".join(self._buffer), []
        await self.ctx.recorder.event("agent_tokens", {"role": self.role, "text": self.ctx.scrubber.text(text)}, defer=defer)

