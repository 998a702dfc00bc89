"""Kernel code for set-up cells that must leave the user's numbering alone.

A ``KernelSession`` has no silent execute, and some backends' services have
none either (E2B's ``/execute``): a set-up cell goes through an ordinary
execute and takes an execution count and a history line. Appended to such a
cell, ``HIDE_THIS_CELL`` gives both back, so the user's next cell gets the
number it would have had.
"""

__all__ = ["HIDE_THIS_CELL", "NUMBER_FROM_ONE"]

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

#: For the set-up cell of a new or restarted kernel: the user's next cell is In [1] whatever ran before it
#: in this kernel. On E2B probe cells go first, and one cut off can be interrupted by the server half-way
#: through its own ``HIDE_THIS_CELL`` (CI saw the next cell numbered 2): counting down would keep that.
NUMBER_FROM_ONE = """
def _dsagent_number_from_one():
    ip = get_ipython()
    history = ip.history_manager
    this_cell = len(history.input_hist_parsed) - 1
    # IPython 8 counts the cell up before running it, older ones after: the difference is kept
    ip.execution_count -= this_cell
    history.writeout_cache()
    history.new_session()
    for hist in (history.input_hist_parsed, history.input_hist_raw):
        del hist[1:]

try:
    _dsagent_number_from_one()
except Exception:
    pass
del _dsagent_number_from_one
"""
