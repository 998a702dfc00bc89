"""What a plan is, and how a planner's reply is read (structured, or a numbered list).

The planner is asked for ``{"steps": [...]}`` (with the endpoint's structured
outputs when it has them, see ``llm.py``); a model without them may still write
a numbered or bulleted list. Anything else cannot be read: the planner is asked
once more with the format restated, then the run fails (fail closed).
"""

from __future__ import annotations

import json
import re

__all__ = ["PLAN_FORMAT", "PLAN_MAX_TOKENS", "PLAN_SCHEMA", "parse_plan"]

MAX_STEPS = 12
PLAN_MAX_TOKENS = 600  # six short steps need ~150; a small model left unbounded repeats itself to the context's end
PLAN_SCHEMA = {
    "type": "object",
    "properties": {"steps": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": MAX_STEPS}},
    "required": ["steps"],
}
PLAN_FORMAT = ('Reply with one JSON object and nothing else: {"steps": ["first step", "second step", ...]} '
               "(at most 6 short steps, no code)")

_LIST_ITEM = re.compile(r"^\s*(?:\d{1,2}[.)]|[-*•])\s+(\S.*)$")


def parse_plan(text: str) -> list[str]:
    """The plan's steps; ValueError says why ``text`` is not a plan."""
    match = re.search(r"\{.*\}", text, re.DOTALL)
    if match:
        try:
            data = json.loads(match.group(0))
        except json.JSONDecodeError:
            data = None
        if isinstance(data, dict) and isinstance(data.get("steps"), list):
            steps = [str(s).strip() for s in data["steps"] if isinstance(s, (str, int, float)) and str(s).strip()]
            if steps:
                return steps[:MAX_STEPS]
            raise ValueError('"steps" holds no step')
    steps = [m.group(1).strip() for line in text.splitlines() if (m := _LIST_ITEM.match(line))]
    if steps:
        return steps[:MAX_STEPS]
    if not text.strip():
        raise ValueError("the reply is empty")
    raise ValueError('the reply holds neither {"steps": [...]} nor a numbered list of steps')
