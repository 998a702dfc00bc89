"""The CLI keeps imports that cost seconds and serve no command out of its process."""

import subprocess
import sys

PROBE = """
import sys
from dsagent.cli import FORMAT_CHECKER_MODULES, skip_slow_optional_imports
skip_slow_optional_imports()
import nbformat
nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1 + 1")])
nbformat.validate(nb)  # validation still works, without the format checkers
try:
    nbformat.validate({"nbformat": 4})
except nbformat.ValidationError:
    print("invalid caught")
print(sorted(m for m in FORMAT_CHECKER_MODULES if sys.modules.get(m) is not None))
"""


def test_jsonschema_format_checkers_are_not_imported_and_validation_still_works():
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.splitlines() == ["invalid caught", "[]"]
