"""Is the final answer grounded in what the run executed? A deterministic check, no model.

A small model writes fluent answers about regions and products that are not in
the data; a reviewer model of the same size accepts them. So before a run may
end ``succeeded``, its answer is held against the run itself:

- a data question whose run executed no analysis cell (only the setup cells)
  is not answered: nothing was computed;
- every number in the answer must appear in (or round from) the output of a
  cell that ran cleanly, the data profile, or an earlier turn of the chat
  (small counts, ordinals and years excepted);
- every quoted name (``"South"``, ``'region'``) must occur in the data
  profile, an output, an artifact's name or the task, so a column or category
  the answer names exists; a name in backticks (`` `revenue` ``, `` `groupby` ``)
  may also come from the code that ran (code that filters on an invented
  category does not make it exist, so quotes are held to the data).

What fails comes back to the agent as review findings (``source: grounding``);
when the revision budget ends with the answer still rejected, the run ends
``unverified``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from dsagent.graphs.state import CellRecord, Finding

__all__ = ["GROUNDING", "analysis_cells", "check_grounding", "numbers_in", "quoted_names", "ungrounded"]

GROUNDING = "grounding"  # the ``source`` of a finding this module made

# a number, not a reference: "#12" names an artifact or a cell
_NUMBER = re.compile(r"(?<![\w.#])-?\d[\d,]*(?:\.\d+)?%?")
# "x", 'x', `x`, “x”: what an answer marks as a name; 1-60 characters, no line break (bold is emphasis, not a name)
_QUOTED = re.compile(r"\"([^\"\n]{1,60})\"|(?<!\w)'([^'\n]{1,60})'(?!\w)|`([^`\n]{1,60})`|“([^”\n]{1,60})”")


def numbers_in(text: str) -> list[tuple[str, float, int, bool]]:
    """(as written, value, decimals, is percent) for each number in ``text``."""
    found = []
    for match in _NUMBER.finditer(text):
        raw = match.group(0)
        percent = raw.endswith("%")
        digits = raw.rstrip("%").replace(",", "")
        try:
            value = float(digits)
        except ValueError:
            continue
        decimals = len(digits.split(".")[1]) if "." in digits else 0
        found.append((raw, value, decimals, percent))
    return found


def _trivial(value: float, decimals: int, percent: bool) -> bool:
    """Small counts, ordinals and years are not claims worth re-deriving."""
    if percent or decimals:
        return False
    return 0 <= value <= 31 or 1900 <= value <= 2100


def _supported(value: float, decimals: int, percent: bool, shown: Sequence[float]) -> bool:
    """Some output shows ``value`` to the precision the answer wrote it (a percent may show as a share)."""
    tolerance = 0.5 * 10 ** (-decimals) + 1e-9
    return any(abs(y - value) <= tolerance or (percent and abs(y * 100 - value) <= tolerance) for y in shown)


def ungrounded(answer: str, shown_text: str) -> list[str]:
    """The numbers of ``answer`` (as written) that ``shown_text`` does not show."""
    shown = [value for _, value, _, _ in numbers_in(shown_text)]
    missing = [raw for raw, value, decimals, percent in numbers_in(answer)
               if not _trivial(value, decimals, percent) and not _supported(value, decimals, percent, shown)]
    return list(dict.fromkeys(missing))


def quoted_names(answer: str) -> list[tuple[str, bool]]:
    """(name, in backticks) for each name the answer quotes (code fences left out: code, not claims)."""
    prose = re.sub(r"```.*?```", " ", answer, flags=re.DOTALL)
    names = []
    for match in _QUOTED.finditer(prose):
        name = next(g for g in match.groups() if g is not None).strip()
        if any(ch.isalpha() for ch in name):  # a quoted number is checked as a number
            names.append((name, match.group(3) is not None))
    return list(dict.fromkeys(names))


def analysis_cells(cells: Sequence[CellRecord]) -> list[CellRecord]:
    """Cells the agent executed itself (not the setup cells) that ran cleanly."""
    return [c for c in cells if c.get("kind", "code") in ("code", "shell") and c.get("role") != "setup"
            and c.get("status") == "ok"]


def _finding(cell: int | None, reason: str, fix: str) -> Finding:
    return Finding(severity="error", cell=cell, reason=reason, fix=fix, source=GROUNDING)  # type: ignore[typeddict-unknown-key]


def check_grounding(answer: str, cells: Sequence[CellRecord], *, profile: str = "", earlier: str = "",
                    needs_analysis: bool = True, task: str = "") -> list[Finding]:
    """The grounding findings of ``answer`` (empty: grounded). ``needs_analysis``: a data question, which
    only an executed analysis cell can answer; ``earlier``: a chat's earlier turns, whose outputs count;
    ``task``: what was asked (the answer may quote it)."""
    findings: list[Finding] = []
    executed = analysis_cells(cells)
    if needs_analysis and not executed:
        findings.append(_finding(None, "no analysis cell ran: the answer rests on no computation",
                                 "run code that computes the answer (run_code), print the values, then answer from the output"))
    outputs = "\n".join(c.get("observation", "") for c in cells if c.get("status") == "ok")
    shown_text = "\n".join([profile, earlier, outputs, task])
    missing = ungrounded(answer, shown_text)
    if missing:
        findings.append(_finding(None, f"the answer states {', '.join(missing)}, which no output shows",
                                 "print the values the answer relies on, then quote them from the output"))
    artifacts = " ".join(str(a.get("name", "")) for c in cells for a in c.get("artifacts", []))
    data_names = "\n".join([shown_text, artifacts]).lower()
    code_names = "\n".join([data_names, *(c.get("code", "") for c in cells if c.get("status") == "ok")]).lower()
    invented = [name for name, code in quoted_names(answer) if name.lower() not in (code_names if code else data_names)]
    if invented:
        listed = ", ".join(repr(n) for n in invented)
        findings.append(_finding(None, f"the answer names {listed}, which neither the data nor any output contains",
                                 "name only columns and categories the outputs show; print them first"))
    return findings
