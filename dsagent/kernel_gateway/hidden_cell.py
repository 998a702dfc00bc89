"""Kernel code for set-up cells that must leave the user's numbering alone.

A ``KernelSession`` has no silent execute, and some backends' services have
none either (E2B's ``/execute``): a set-up cell goes through an ordinary
execute and takes an execution count and a history line. Appended to such a
cell, ``HIDE_THIS_CELL`` gives both back, so the user's next cell gets the
number it would have had.
"""

__all__ = ["HIDE_THIS_CELL"]

HIDE_THIS_CELL = """
def _dsagent_hide_this_cell():
    # give the user's cells back their numbers: this cell's history entry goes
    # to a closed history session, so the next cell can reuse its line number
    ip = get_ipython()
    history = ip.history_manager
    history.writeout_cache()
    history.new_session()
    for hist in (history.input_hist_parsed, history.input_hist_raw):
        if len(hist) > 1:
            hist.pop()
    ip.execution_count -= 1

try:
    _dsagent_hide_this_cell()
except Exception:
    pass
del _dsagent_hide_this_cell
"""
