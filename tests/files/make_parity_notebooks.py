"""Builds the golden notebooks of the engine-comparison tests (tests/runs/test_engine_parity.py).

Run it to regenerate the committed ``parity_*.ipynb`` after changing a cell:
``python tests/files/make_parity_notebooks.py``. Each notebook exercises one
row group of docs/notebook-parity.md and is run through papermill's own
engine and ``--engine dsagent``; the saved notebooks are compared.
"""

from __future__ import annotations

from pathlib import Path

import nbformat

KERNELSPEC = {"name": "python3", "display_name": "Python 3", "language": "python"}
HERE = Path(__file__).parent


def _notebook(*cells: tuple[str, list[str]] | str) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": KERNELSPEC})
    for cell in cells:
        source, tags = (cell, []) if isinstance(cell, str) else cell
        node = nbformat.v4.new_code_cell(source)
        if tags:
            node.metadata["tags"] = tags
        nb.cells.append(node)
    return nb


def displays() -> nbformat.NotebookNode:
    """Display ids across cells, with clear_output; streams, results, markdown."""
    nb = _notebook(
        ("n = 1", ["parameters"]),
        "from IPython.display import display, update_display, clear_output, Markdown\n"
        "h = display('first', display_id=True)\n"
        "display('named', display_id='fixed')\n"
        "print('between')",
        "for step in range(3):\n    h.update(f'step {step}')\n"
        "h.update('second')\n"
        "update_display(Markdown('**updated**'), display_id='fixed')\n"
        "print('updated the cell above')",
        "g = display('cleared later', display_id=True)\nclear_output()\nprint('after clear')",
        "g.update('must not come back')\n"
        "again = display('shown twice', display_id='twice')",
        "display('replaced', display_id='twice')\n"
        "k = display('wait-cleared', display_id=True)\n"
        "clear_output(wait=True)\n"
        "k.update('updated after the wait clear')\n"
        "print('after wait clear')",
        "import sys\nprint('out', flush=True); print('err', file=sys.stderr, flush=True)\n{'n': n * 2}",
    )
    nb.cells.insert(1, nbformat.v4.new_markdown_cell("# display ids across cells"))
    return nb


def tags() -> nbformat.NotebookNode:
    """skip-execution and raises-exception: the skipped cell does not run, the expected error does not stop the run."""
    nb = _notebook(
        ("n = 1", ["parameters"]),
        ("raise RuntimeError('never runs')", ["skip-execution"]),
        ("print('expected failure')\n1 / 0", ["raises-exception"]),
        "print('the run went on', n)",
        "import sys\nsys.exit(0)",  # ends the run early without an error, under papermill's engine too
        "print('never runs: the notebook exited')",
    )
    nb.cells[1].outputs = [nbformat.v4.new_output("stream", name="stdout", text="kept from before\n")]
    nb.cells[1].execution_count = 7
    return nb


def history() -> nbformat.NotebookNode:
    """IPython history as the code in the notebook sees it: In, %history, the history manager."""
    return _notebook(
        ("n = 1", ["parameters"]),
        "x = n * 2",
        "print(len(In), In[-2])\n%history -n -l 2",
        "hm = get_ipython().history_manager\n"
        "print(hm.enabled, hm.session_number, sorted(hm.get_range(output=False), key=lambda r: r[1])[-1][2])\n"
        "print(list(hm.get_tail(2, include_latest=True))[-1][2][:9])",
        "%history -g x = n",
    )


def failure() -> nbformat.NotebookNode:
    """A failing cell: papermill's error cell, later cells pending; sys.exit(0) is not an error."""
    return _notebook(
        ("n = 1", ["parameters"]),
        "import sys\nprint('before')\nprint('warned', file=sys.stderr)",
        "n * 10",
        "try:\n    import sys; sys.exit(0)\nexcept SystemExit as stop:\n    print('exit', stop.code)",
        "raise ValueError(f'bad n={n}')",
        "print('never')",
    )


def autosave() -> nbformat.NotebookNode:
    """What papermill has saved while a cell runs (request_save_on_cell_execute): read back from the output file."""
    return _notebook(
        ("n = 1", ["parameters"]),
        "print('saved before the next cell starts')",
        "import json\n"
        "saved = json.load(open('parity_autosave.ipynb'))  # the output notebook, in the run's cwd\n"
        "for cell in saved['cells']:\n"
        "    print(cell['metadata']['papermill']['status'], cell.get('execution_count'), [o.get('text') for o in cell.get('outputs', [])])",
    )


NOTEBOOKS = {"parity_displays": displays, "parity_tags": tags, "parity_history": history, "parity_failure": failure, "parity_autosave": autosave}

if __name__ == "__main__":
    for name, build in NOTEBOOKS.items():
        nbformat.write(build(), HERE / f"{name}.ipynb")
