"""The tools an agent calls, and what the model is told back.

``Toolbox.call`` takes one parsed ``ToolCall`` and always returns a
``ToolResult``: a bad call (unknown tool, arguments that are not JSON, a
missing or mistyped argument, a path outside the work dir) becomes an
observation that says exactly what was wrong, so the model can retry. Code
runs in the run's kernel session; each code cell is recorded through the
run's ``RunRecorder`` (its outputs and files become artifacts), each call is
an event, and secrets from the environment are scrubbed from everything kept.
"""

from __future__ import annotations

import dataclasses
import json
import mimetypes
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from dsagent.artifacts.models import NewArtifact
from dsagent.artifacts.recorder import RunRecorder
from dsagent.graphs.llm import ToolCall
from dsagent.secrets import Scrubber
from dsagent.graphs.state import CellRecord
from dsagent.kernel_gateway.base import KernelSession
from dsagent.kernel_gateway.models import Execution, ExecutionError

__all__ = ["TOOL_SPECS", "ToolResult", "Toolbox", "render_outputs", "trim"]

OBSERVATION_HEAD = 2_000  # characters of output the model sees from the start ...
OBSERVATION_TAIL = 800  # ... and from the end
TRACEBACK_LINES = 12
READ_FILE_DEFAULT = 4_000
ANNOUNCE_AFTER = 0.5  # seconds a cell runs before followers are told it started (shorter cells: one write)
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _spec(name: str, description: str, properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": {"type": "object", "properties": properties, "required": required, "additionalProperties": False},
        },
    }


TOOL_SPECS: list[dict[str, Any]] = [
    _spec("run_code", "Run Python in the task's Jupyter kernel (state persists between calls). Plots shown with "
          "plt.show() and displayed DataFrames are kept as artifacts.",
          {"code": {"type": "string", "description": "the Python cell to run"}}, ["code"]),
    _spec("list_files", "List files under a folder of the work dir.",
          {"path": {"type": "string", "description": "folder relative to the work dir (default '.')"}}, []),
    _spec("read_file", "Read the start of a text file in the work dir.",
          {"path": {"type": "string"}, "max_chars": {"type": "integer", "description": f"default {READ_FILE_DEFAULT}"}}, ["path"]),
    _spec("write_file", "Write a text file in the work dir (replaces it).",
          {"path": {"type": "string"}, "content": {"type": "string"}}, ["path", "content"]),
    _spec("shell", "Run a shell command in the work dir (through the kernel); returns its output and exit code.",
          {"command": {"type": "string"}, "timeout": {"type": "number", "description": "seconds (default: the cell timeout)"}},
          ["command"]),
]
_BY_NAME = {spec["function"]["name"]: spec["function"] for spec in TOOL_SPECS}
_JSON_TYPES: dict[str, tuple[type, ...]] = {"string": (str,), "integer": (int,), "number": (int, float)}

StepHook = Callable[[str, dict[str, Any]], None | Awaitable[None]]


@dataclass
class ToolResult:
    """What the model is told, plus the cells to add to the run's notebook (none for a refused call)."""

    observation: str
    cells: list[CellRecord] = field(default_factory=list)
    ok: bool = True


def trim(text: str, head: int = OBSERVATION_HEAD, tail: int = OBSERVATION_TAIL) -> tuple[str, bool]:
    """``text`` cut to head + tail characters, with a marker saying how much was left out."""
    if len(text) <= head + tail:
        return text, False
    cut = len(text) - head - tail
    return f"{text[:head]}\n[... {cut} characters cut ...]\n{text[-tail:]}", True


def render_outputs(outputs: list[dict[str, Any]]) -> str:
    """The outputs of a cell as plain text for the model (images named, not inlined)."""
    parts: list[str] = []
    for out in outputs:
        kind = out.get("output_type")
        if kind == "stream":  # colour codes (pytest, tqdm) mean nothing to the model and break number matching
            text = _ANSI.sub("", out["text"] if isinstance(out["text"], str) else "".join(out["text"]))
            parts.append(text if out.get("name") == "stdout" else f"[stderr] {text}")
        elif kind in ("execute_result", "display_data"):
            data = out.get("data", {})
            images = [m for m in data if m.startswith("image/")]
            if images:
                parts.append(f"[{images[0]} image]\n")
            elif "text/plain" in data:
                text = data["text/plain"]
                parts.append((text if isinstance(text, str) else "".join(text)) + "\n")
            elif data:
                parts.append(f"[{next(iter(data))} output]\n")
        elif kind == "error":
            lines = _ANSI.sub("", "\n".join(out.get("traceback") or [])).splitlines()
            shown = lines[-TRACEBACK_LINES:]
            more = f"[... {len(lines) - len(shown)} traceback lines above ...]\n" if len(lines) > len(shown) else ""
            parts.append(f"{more}" + "\n".join(shown) + f"\n{out.get('ename')}: {out.get('evalue')}\n")
    return "".join(parts)


class Toolbox:
    """Runs tool calls for one agent in one kernel session, recording each as the run's cells and events."""

    def __init__(
        self,
        session: KernelSession,
        recorder: RunRecorder,
        *,
        scrubber: Scrubber,
        cell_timeout: float,
        next_cell: int = 0,
        setup_code: str = "",
        on_step: StepHook | None = None,
        recorded: Mapping[int, CellRecord] | None = None,
    ) -> None:
        self.session = session
        self.recorder = recorder
        self.scrubber = scrubber
        self.cell_timeout = cell_timeout
        self.next_cell = next_cell
        self.setup_code = setup_code  # re-run after a kernel death, so `data` etc. exist again
        self.on_step = on_step
        self.recorded = dict(recorded or {})  # cells finished earlier that a re-run node may ask for again, by number
        self.finished: dict[int, CellRecord] = dict(self.recorded)  # every cell this run has finished, by number

    @staticmethod
    def specs() -> list[dict[str, Any]]:
        return TOOL_SPECS

    async def call(self, call: ToolCall, *, role: str = "analyst") -> ToolResult:
        problem = self._problem(call)
        arguments = call.arguments if isinstance(call.arguments, Mapping) else {}
        await self.recorder.event("tool_call", {"role": role, "tool": call.name, "arguments": self._for_event(arguments),
                                                "refused": problem}, defer=True)
        if problem is not None:
            result = ToolResult(f"error: {problem}", ok=False)
        else:
            started = time.monotonic()
            result = await getattr(self, f"_tool_{call.name}")(role=role, **arguments)
            await self._step("tool", {"role": role, "tool": call.name, "ok": result.ok, "arguments": self._for_event(arguments),
                                      "seconds": round(time.monotonic() - started, 3), "summary": result.observation[:200]})
        await self.recorder.event("tool_result", {"role": role, "tool": call.name, "ok": result.ok,
                                                  "cells": [c["cell"] for c in result.cells],
                                                  "observation": trim(result.observation, 1000, 300)[0]}, defer=True)
        return result

    # -- validation -----------------------------------------------------

    def _problem(self, call: ToolCall) -> str | None:
        if call.name not in _BY_NAME:
            return f"there is no tool named {call.name!r}; the tools are: {', '.join(_BY_NAME)}"
        if call.error:
            example = json.dumps({name: "..." for name in _BY_NAME[call.name]["parameters"]["required"]})
            return f"{call.error}; send the arguments as one JSON object, e.g. {example}"
        schema = _BY_NAME[call.name]["parameters"]
        arguments = call.arguments
        unknown = sorted(set(arguments) - set(schema["properties"]))
        if unknown:
            return f"{call.name} takes no argument {', '.join(map(repr, unknown))}; it takes: {', '.join(schema['properties'])}"
        missing = [name for name in schema["required"] if name not in arguments]
        if missing:
            return f"{call.name} needs the argument {', '.join(map(repr, missing))}"
        for name, value in arguments.items():
            expected = schema["properties"][name]["type"]
            if not isinstance(value, _JSON_TYPES[expected]) or isinstance(value, bool):
                return f"argument {name!r} of {call.name} must be a {expected}, not {type(value).__name__}"
        path = arguments.get("path")
        if isinstance(path, str) and (path.startswith("/") or ".." in path.replace("\\", "/").split("/")):
            return f"path {path!r} is outside the work dir; use a path relative to it, without '..'"
        return None

    # -- the tools ------------------------------------------------------

    async def _tool_run_code(self, code: str, role: str) -> ToolResult:
        cell = await self.run_cell(code, role=role)
        return ToolResult(cell["observation"], [cell], ok=cell["status"] == "ok")

    async def _tool_shell(self, command: str, role: str, timeout: float | None = None) -> ToolResult:
        seconds = float(timeout or self.cell_timeout)
        code = (  # the kernel's interpreter first on PATH: `python`, `pytest` mean the kernel's own
            "import os as _os, subprocess as _sp, sys as _sys\n"
            "_env = dict(_os.environ, PATH=_os.path.dirname(_sys.executable) + _os.pathsep + _os.environ.get('PATH', ''))\n"
            f"_done = _sp.run({command!r}, shell=True, capture_output=True, text=True, timeout={seconds!r}, env=_env)\n"
            "print(_done.stdout, end='')\nprint(_done.stderr, end='', file=_sys.stderr)\n"
            "print(f'[exit code {_done.returncode}]')"
        )
        cell = await self.run_cell(code, role=role, kind="shell", timeout=seconds + 5)
        return ToolResult(cell["observation"], [cell], ok=cell["status"] == "ok")

    async def _tool_list_files(self, role: str, path: str = ".") -> ToolResult:
        try:
            entries = await self.session.list_files(path or ".", recursive=False)
        except Exception as exc:  # a missing folder is the model's mistake, not the run's
            return ToolResult(f"error: cannot list {path!r}: {exc}", ok=False)
        if not entries:
            return ToolResult(f"{path!r} is empty")
        lines = [f"{e.path}{'/' if e.is_dir else ''}  {'' if e.is_dir else f'{e.size} bytes'}" for e in entries[:200]]
        if len(entries) > 200:
            lines.append(f"[... {len(entries) - 200} more]")
        return ToolResult("\n".join(lines))

    async def _tool_read_file(self, path: str, role: str, max_chars: int = READ_FILE_DEFAULT) -> ToolResult:
        try:
            data = await self.session.download(path)
        except Exception as exc:
            return ToolResult(f"error: cannot read {path!r}: {exc}", ok=False)
        text = self.scrubber.text(data.decode("utf-8", errors="replace"))
        more = f"\n[... {len(text) - max_chars} more characters]" if len(text) > max_chars else ""
        return ToolResult(text[: max(0, max_chars)] + more)

    async def _tool_write_file(self, path: str, content: str, role: str) -> ToolResult:
        cell_no = self._take_cell()
        shown = f"%%writefile {path}\n{self.scrubber.text(content)}"
        reused = self._reuse(cell_no, shown)
        if reused is not None:  # written before (a node run again, or a resumed run's replay wrote it)
            return ToolResult(reused["observation"], [reused])
        await self.recorder.cell_started(cell_no, shown, announce_after=ANNOUNCE_AFTER)
        extra: list[NewArtifact] = []
        try:
            await self.session.upload(path, content.encode("utf-8"))
        except Exception as exc:
            problem = f"cannot write {path!r}: {exc}"
            execution = Execution(code=shown, status="error", error=ExecutionError("OSError", problem),
                                  outputs=[{"output_type": "error", "ename": "OSError", "evalue": problem, "traceback": []}])
            observation = f"error: {problem}"
        else:
            execution = Execution(code=shown, outputs=[{"output_type": "stream", "name": "stdout", "text": f"Writing {path}\n"}])
            observation = f"wrote {len(content.encode('utf-8'))} bytes to {path}"
            # no kernel code wrote it, so the kernel's capture does not report it: the file artifact is made here
            mime = mimetypes.guess_type(path)[0] or "text/plain"
            extra.append(NewArtifact(path, "file", mime, content.encode("utf-8"), cell=cell_no, metadata={"path": path, "change": "written"}))

        def record(added: list[Any]) -> CellRecord:
            return CellRecord(cell=cell_no, kind="file", code=shown, status=execution.status, outputs=execution.outputs,
                              execution_count=None, artifacts=[_ref(a) for a in added], observation=observation, role=role)

        cell = await self._record(cell_no, execution, record, extra)
        return ToolResult(observation, [cell], ok=execution.status == "ok")

    # -- cells ------------------------------------------------------------

    def rewind(self, next_cell: int) -> None:
        """A node starts (or starts again, after an interrupt or a resume) with ``next_cell`` as its first
        number: cells it already finished under the same numbers are taken from the record, not re-run."""
        self.next_cell = next_cell
        self.recorded = {n: c for n, c in self.finished.items() if n >= next_cell}

    def _take_cell(self) -> int:
        cell, self.next_cell = self.next_cell, self.next_cell + 1
        return cell

    async def run_cell(self, code: str, *, role: str, kind: str = "code", timeout: float | None = None) -> CellRecord:
        """Execute ``code`` as the run's next cell: recorded, captured, scrubbed, summarized for the model.

        On a resumed run, a cell this run already finished (same number, same code) is not run
        again: its journaled record is returned (the kernel state was rebuilt by replay).
        """
        cell_no = self._take_cell()
        shown_code = self.scrubber.text(code)
        reused = self._reuse(cell_no, shown_code)
        if reused is not None:
            return reused
        await self.recorder.cell_started(cell_no, shown_code, announce_after=ANNOUNCE_AFTER)
        timeout = timeout or self.cell_timeout
        # what the cell prints reaches followers while it runs (``cell_output`` events), not only at its end
        raw = await self.session.execute(code, timeout=timeout, on_output=self.recorder.stream_outputs(cell_no))
        execution = dataclasses.replace(raw, code=shown_code, outputs=self.scrubber.outputs(raw.outputs))
        if execution.error is not None:
            execution.error = dataclasses.replace(
                execution.error, evalue=self.scrubber.text(execution.error.evalue), traceback=self.scrubber.value(execution.error.traceback)
            )
        text = render_outputs(execution.outputs)
        shown, cut = trim(text)
        extra = [NewArtifact(f"cell-{cell_no}-output.txt", "text", "text/plain", text.encode("utf-8"), cell=cell_no,
                             metadata={"reason": "full output of a cell the model saw trimmed"})] if cut else []

        def record(added: list[Any]) -> CellRecord:
            refs = [_ref(a) for a in added]
            return CellRecord(cell=cell_no, kind=kind, code=execution.code, status=execution.status, outputs=execution.outputs,
                              execution_count=execution.execution_count, artifacts=refs,
                              observation=self._observation(cell_no, execution, shown, refs, timeout), role=role)

        cell = await self._record(cell_no, execution, record, extra)
        if execution.status == "died":
            cell["observation"] += await self._recover()
        return cell

    async def _record(self, cell_no: int, execution: Execution, record: Any, extra: list[NewArtifact] | None = None) -> CellRecord:
        """Record the cell; its journal entry (``agent_cell``) goes in the same transaction."""
        built: list[CellRecord] = []

        def journal(added: list[Any]) -> list[tuple[str, dict[str, Any]]]:
            built.append(record(added))
            self.finished[cell_no] = built[0]
            return [("agent_cell", dict(built[0]))]

        await self.recorder.record_cell(cell_no, execution, extra=extra or [], follow_up=journal)
        return built[0]

    def _reuse(self, cell_no: int, code: str) -> CellRecord | None:
        recorded = self.recorded.pop(cell_no, None)
        if recorded is None or recorded.get("code") != code:
            return None
        return recorded

    def _observation(self, cell: int, execution: Execution, shown: str, refs: list[dict[str, Any]], timeout: float) -> str:
        head = {
            "ok": f"cell {cell} ran ok ({execution.duration:.2f} s)",
            "error": f"cell {cell} raised {execution.error.ename if execution.error else 'an error'}",
            "timeout": f"cell {cell} was interrupted after {timeout:g} s (the kernel keeps its state; make the code faster)",
            "died": f"cell {cell}: the kernel died ({execution.error.evalue if execution.error else 'no reason given'})",
        }[execution.status]
        lines = [head]
        if shown.strip():
            lines.append("output:\n" + shown.rstrip())
        elif execution.status == "ok":
            lines.append("(no output)")
        if refs:
            lines.append("artifacts: " + ", ".join(f"#{r['id']} {r['name']} ({r['kind']})" for r in refs))
        return "\n".join(lines)

    async def _recover(self) -> str:
        try:
            await self.session.restart()
            if self.setup_code:
                await self.session.execute(self.setup_code, timeout=self.cell_timeout)
        except Exception as exc:
            return f"\nthe kernel could not be restarted: {exc}"
        return "\nthe kernel was restarted: every variable is gone except the parameters; load the data again"

    def _for_event(self, arguments: Mapping[str, Any]) -> dict[str, Any]:
        return {k: (trim(v, 4000, 1000)[0] if isinstance(v, str) else v) for k, v in self.scrubber.value(dict(arguments)).items()}

    async def _step(self, kind: str, payload: dict[str, Any]) -> None:
        if self.on_step is not None:
            result = self.on_step(kind, payload)
            if isinstance(result, Awaitable):
                await result


def _ref(artifact: Any) -> dict[str, Any]:
    return {"id": artifact.id, "name": artifact.name, "kind": artifact.kind}
