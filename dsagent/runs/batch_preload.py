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

import logging

from dsagent.cli import skip_slow_optional_imports

skip_slow_optional_imports()  # as the CLI does: jsonschema then has no iri (or other optional format) checkers

import nbformat  # noqa: E402,F401
import papermill.execute  # noqa: E402,F401
import papermill.inspection  # noqa: E402,F401
import papermill.parameterize  # noqa: E402,F401

import dsagent.artifacts.journal  # noqa: E402,F401
import dsagent.artifacts.recorder  # noqa: E402,F401
import dsagent.kernel_gateway.local  # noqa: E402,F401
import dsagent.runs.batch_worker  # noqa: E402,F401
import dsagent.runs.notebook_run  # noqa: E402,F401


def _not_the_shutdown_heartbeat(record: logging.LogRecord) -> bool:
    """False for the heartbeat a worker sends as the sweep's cluster closes (the scheduler went first).

    Dask logs it at ERROR with a traceback (dask/distributed#7105), and so it
    reached ``dsagent batch``'s stderr at the end of a sweep whose children all
    succeeded. The scheduler of a sweep's own cluster lives in the sweep's
    process: if it really were lost, the sweep fails and says so itself.
    """
    return not record.getMessage().startswith("Failed to communicate with scheduler during heartbeat")


logging.getLogger("distributed.worker").addFilter(_not_the_shutdown_heartbeat)


def dask_setup(worker: object) -> None:
    """Start the kernels' fork template while the worker starts (Dask calls this once per worker).

    A sweep's workers run with Dask's own environment (``OMP_NUM_THREADS=1``,
    ``PYTHONHASHSEED``, ...), so their kernels fork from a template of their
    own; until it has imported its preload list, children launch cold (~0.7 s
    of CPU each instead of ~0.1 s), and a sweep's first children paid that.
    Both workers ask for the same template; the fork server starts it once.
    Any failure only means children launch normally, as before.
    """
    import asyncio
    import threading

    from dsagent.kernel_gateway.registry import get_backend
    from dsagent.settings import Settings

    async def warm() -> None:
        async with get_backend("local", Settings(), pool_size=0) as backend:
            await backend.warm()

    def run() -> None:
        try:
            asyncio.run(warm())
        except Exception:  # noqa: BLE001  (no template: children launch normally)
            pass

    # in a thread of its own: this runs inside the worker's event loop, which must not run another
    starter = threading.Thread(target=run, name="dsagent-fork-template", daemon=True)
    starter.start()
    starter.join(60)
