"""Turn Jupyter iopub messages into nbformat outputs, as a notebook frontend would.

Shared by every backend that speaks the Jupyter protocol (local, sandbox,
remote): consecutive stream chunks merge, ``clear_output`` and
``update_display_data`` apply, and output past a byte cap is dropped and
marked, so a flood cannot exhaust memory. A rich output too big for what is
left of the cap loses its biggest representations first (a DataFrame's
``e2b/data``, a huge image), keeping ``text/plain`` and ``text/html`` as long
as they fit, and the closing note names what was left out. Display messages that name a
display id are also kept in order (``displays()``), because Jupyter applies
them to earlier cells too, and only the notebook knows those.
"""

from __future__ import annotations

import json
from typing import Any

from dsagent.kernel_gateway.models import DisplayUpdate, Displays, ExecutionError, Output

__all__ = ["OutputCollector"]

_OUTPUT_TYPES = {"stream", "display_data", "execute_result", "error"}
#: what a rich output keeps longest when it is too big: text/plain last of all
_KEPT_LONGEST = ("text/html", "text/plain")


def output_from_msg(msg: dict[str, Any]) -> Output:
    """An nbformat v4 output dict for an output message.

    nbformat's own ``output_from_msg`` validates every output against the
    JSON schema, which costs more than the rest of a ``1+1`` round trip.
    """
    msg_type = msg["header"]["msg_type"]
    content = msg["content"]
    if msg_type == "stream":
        return {"output_type": "stream", "name": content["name"], "text": content["text"]}
    if msg_type == "error":
        return {
            "output_type": "error",
            "ename": content.get("ename", ""),
            "evalue": content.get("evalue", ""),
            "traceback": list(content.get("traceback", [])),
        }
    output: Output = {"output_type": msg_type, "data": content.get("data", {}), "metadata": content.get("metadata", {})}
    if msg_type == "execute_result":
        output["execution_count"] = content.get("execution_count")
    return output


def _size(output: Output) -> int:
    if output["output_type"] == "stream":
        return len(output["text"])
    return len(json.dumps(output.get("data") or output, default=str))


class OutputCollector:
    """Accumulates the outputs of one execution."""

    def __init__(self, max_bytes: int) -> None:
        self.outputs: list[Output] = []
        self.error: ExecutionError | None = None
        self.execution_count: int | None = None
        self.max_bytes = max_bytes
        self.kept_bytes = 0
        self.dropped_bytes = 0
        self.dropped_mimes: list[tuple[str, int]] = []  # representations left out of rich outputs, with their sizes
        self._clear_on_next = False
        self._full = False  # the cap was reached: keep nothing more until a clear_output
        self._display_ids: dict[str, list[Output]] = {}
        # the last display message per id: only that one decides what earlier cells show (a loop
        # of h.update(...) keeps one entry, not thousands)
        self._display_updates: dict[str, DisplayUpdate] = {}

    @property
    def truncated(self) -> bool:
        return self.dropped_bytes > 0

    def handle(self, msg: dict[str, Any]) -> Output | None:
        """Apply one iopub message; return the new output chunk to stream, if any."""
        msg_type = msg["header"]["msg_type"]
        content = msg["content"]
        if msg_type == "execute_input":
            self.execution_count = content.get("execution_count")
            return None
        if msg_type == "clear_output":
            if content.get("wait"):
                self._clear_on_next = True
            else:
                self._clear()
            return None
        if msg_type in ("display_data", "execute_result", "update_display_data"):
            self._update_display(content)  # a new display with a known id updates the old ones too, as in Jupyter
        if msg_type == "update_display_data" or msg_type not in _OUTPUT_TYPES:
            return None
        if self._clear_on_next:
            self._clear()
        output = output_from_msg(msg)
        if msg_type == "error":
            self.error = ExecutionError(content.get("ename", ""), content.get("evalue", ""), list(content.get("traceback", [])))
        if msg_type == "execute_result":
            self.execution_count = content.get("execution_count", self.execution_count)
        if msg_type in ("display_data", "execute_result") and not self._full:
            output = self._fit(output)
        self._keep(output, content)
        return output

    def _fit(self, output: Output) -> Output:
        """``output`` without its biggest representations, if that makes it fit in what is left of the cap."""
        room = self.max_bytes - self.kept_bytes
        data = output.get("data") or {}
        sizes = {mime: len(json.dumps(value, default=str)) for mime, value in data.items()}
        total = sum(sizes.values())
        if total <= room:
            return output
        order = sorted((m for m in data if m not in _KEPT_LONGEST), key=lambda m: -sizes[m])
        order += [m for m in _KEPT_LONGEST if m in data]
        kept = dict(data)
        for mime in order:
            if total <= room or len(kept) == 1:
                break
            del kept[mime]
            total -= sizes[mime]
            self.dropped_bytes += sizes[mime]
            self.dropped_mimes.append((mime, sizes[mime]))
        return {**output, "data": kept}

    def _keep(self, output: Output, content: dict[str, Any]) -> None:
        size = _size(output)
        if output["output_type"] != "error" and (self._full or self.kept_bytes + size > self.max_bytes):
            room = self.max_bytes - self.kept_bytes
            if self._full or output["output_type"] != "stream" or room <= 0:
                self.dropped_bytes += size
                self._full = True
                return
            # keep the head of the chunk and nothing after it: what is kept reads
            # on without gaps (a later, smaller chunk would otherwise slip in)
            self.dropped_bytes += size - room
            self._full = True
            output = {**output, "text": output["text"][:room]}
            size = room
        self.kept_bytes += size
        display_id = (content.get("transient") or {}).get("display_id")
        last = self.outputs[-1] if self.outputs else None
        if (
            output["output_type"] == "stream"
            and last is not None
            and last["output_type"] == "stream"
            and last["name"] == output["name"]
        ):
            last["text"] += output["text"]
            return
        stored = dict(output)  # the streamed chunk stays as the hook saw it
        self.outputs.append(stored)
        if display_id:
            self._display_ids.setdefault(display_id, []).append(stored)

    def _clear(self) -> None:
        self.outputs.clear()
        self._display_ids.clear()
        self.kept_bytes = 0
        self._full = False
        self._clear_on_next = False

    def _update_display(self, content: dict[str, Any]) -> None:
        display_id = (content.get("transient") or {}).get("display_id")
        if not display_id:
            return
        update = DisplayUpdate(display_id, content.get("data", {}), content.get("metadata", {}))
        self._display_updates.pop(display_id, None)  # re-inserted: the dict keeps arrival order
        self._display_updates[display_id] = update
        for output in self._display_ids.get(display_id, []):
            output["data"] = update.data
            output["metadata"] = update.metadata

    def displays(self) -> Displays:
        """Which kept outputs show which display id, and the last display message that named each id."""
        position = {id(output): index for index, output in enumerate(self.outputs)}
        owners = {
            display_id: [position[id(o)] for o in outputs if id(o) in position]
            for display_id, outputs in self._display_ids.items()
        }
        return Displays({k: v for k, v in owners.items() if v}, list(self._display_updates.values()))

    def finish(self) -> list[Output]:
        """The outputs, with a closing note if some were dropped."""
        if self.truncated:
            left_out = ""
            if self.dropped_mimes:
                names = ", ".join(f"{mime} ({size / 1e6:.1f} MB)" for mime, size in self.dropped_mimes)
                left_out = f"; left out of rich results, biggest first: {names}"
            self.outputs.append(
                {
                    "output_type": "stream",
                    "name": "stderr",
                    "text": f"[dsagent: output truncated: kept {self.kept_bytes} bytes, "
                    f"dropped {self.dropped_bytes} bytes past the max_output_bytes limit ({self.max_bytes} bytes){left_out}]\n",
                }
            )
        return self.outputs
