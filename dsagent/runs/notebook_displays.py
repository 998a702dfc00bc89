"""Display ids across a notebook: ``h.update(y)`` in a later cell updates the output ``h`` made earlier.

Jupyter front-ends and nbclient keep a notebook-wide map from kernel display
id to the outputs showing it; an ``update_display_data`` (or a new display
with a known id) replaces their ``data`` and ``metadata`` wherever they are.
A ``KernelSession`` sees one cell at a time, so it applies updates within the
cell and reports the rest in ``Execution.displays``; this index applies them
to the cells before. ``clear_output`` drops a cell's outputs from the index
(the cleared outputs are gone from ``Displays.owners``), as nbclient does.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    from dsagent.kernel_gateway.models import Displays

__all__ = ["DisplayIndex"]


class DisplayIndex:
    """The outputs of a notebook's executed cells, by kernel display id."""

    def __init__(self) -> None:
        self._outputs: dict[str, list[Any]] = {}

    def add_cell(self, outputs: Sequence[Any], displays: "Displays") -> bool:
        """Apply a finished cell's display messages to earlier cells, then index its outputs.

        ``outputs`` are the cell's saved outputs, in the order of
        ``Execution.outputs`` (``None`` where one was left out). Returns whether
        an earlier cell changed, so the caller can save the notebook.
        """
        changed = False
        for update in displays.updates:  # the last message per id: what Jupyter shows in the end
            for output in self._outputs.get(update.display_id, []):
                output["data"] = _node(update.data)
                output["metadata"] = _node(update.metadata)
                changed = True
        for display_id, indices in displays.owners.items():
            shown = [outputs[i] for i in indices if i < len(outputs) and outputs[i] is not None]
            self._outputs.setdefault(display_id, []).extend(shown)
        return changed


def _node(value: dict[str, Any]) -> Any:
    from nbformat import from_dict

    return from_dict(copy.deepcopy(value))  # one output's data must not alias another's
