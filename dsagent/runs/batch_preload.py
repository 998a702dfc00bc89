"""Imported by each Dask worker of a sweep's own LocalCluster as it starts (Dask's ``preload``): what a child needs.

A worker is a fresh interpreter; without this, its first child paid for
importing papermill, nbformat and the recorder (the first children of a sweep
waited for it, and the CPU was counted against them). More than half of that
was one optional package: jsonschema (which nbformat imports) checks the
``iri`` string format with ``rfc3987_syntax`` when that is installed, and
importing it compiles a Lark grammar, ~1-2 s of CPU per process. Neither
nbformat nor dsagent ever checks that format (nbformat's validation passes no
format checker), so this worker skips the package: jsonschema then simply has
no ``iri`` checker. Only our own LocalCluster workers do this; a worker of an
external cluster (``--cluster ADDRESS``) is left as its owner set it up.
"""

from __future__ import annotations

import sys

if "rfc3987_syntax" not in sys.modules:
    sys.modules["rfc3987_syntax"] = None  # type: ignore[assignment]  # an ImportError for jsonschema's optional import

import nbformat  # noqa: E402,F401
import papermill.execute  # noqa: E402,F401
import papermill.inspection  # noqa: E402,F401
import papermill.parameterize  # noqa: E402,F401

import dsagent.artifacts.journal  # noqa: E402,F401
import dsagent.artifacts.recorder  # noqa: E402,F401
import dsagent.kernel_gateway.local  # noqa: E402,F401
import dsagent.runs.batch_worker  # noqa: E402,F401
import dsagent.runs.notebook_run  # noqa: E402,F401
