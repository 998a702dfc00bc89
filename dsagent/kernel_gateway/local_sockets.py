"""How a local kernel's sockets are made: unix sockets of its own (no TCP port race), one zmq context per process.

Shared by the local backend's managers and clients, forked or cold, and by the
parity tests' stock nbclient kernels (``ipc_sockets``).
"""

from __future__ import annotations

import logging
import os
import uuid

import zmq
import zmq.asyncio

from dsagent.kernel_gateway.forkserver import ForkFailed, runtime_dir

__all__ = ["ipc_sockets", "shared_zmq_context"]

log = logging.getLogger(__name__)

#: the longest path a unix socket can have (sun_path is 108 bytes with its NUL); ipc sockets are ``<prefix>-<n>``
_MAX_SOCKET_PATH = 100


def ipc_sockets() -> dict[str, str]:
    """Manager options that put a kernel's five sockets on unix sockets of its own (``ipc``), not TCP ports.

    With TCP, jupyter_client picks free ports by binding and closing them, and
    the kernel binds them later: any process's bind or connect in between may
    take one, and the kernel dies with "Address already in use" (seen on a busy
    machine running many kernels at once). An ipc socket is a path in an
    owner-only folder, unique per kernel: nothing can take it, and no other
    user can connect (ipykernel warns that its TCP sockets are unencrypted).
    Restarts rebind the same paths. TCP remains where no such folder is
    usable (a temp dir too long for a socket path).
    """
    try:
        folder = runtime_dir()
    except ForkFailed as exc:
        log.warning("kernels use TCP ports: %s", exc)
        return {}
    prefix = os.path.join(folder, f"k-{uuid.uuid4().hex[:16]}")
    if len(prefix) + 3 > _MAX_SOCKET_PATH:
        return {}
    return {"transport": "ipc", "ip": prefix}


def shared_zmq_context() -> zmq.asyncio.Context:
    """The process's one zmq context, shared by every kernel's manager and client.

    jupyter_client would make a context per manager and leave it to the garbage
    collector, whose ``zmq_ctx_term`` then blocks whatever thread collects it
    for as long as a socket of a dead kernel holds an unsent message (seen: a
    test run stuck at exit). One context that lives as long as the process is
    never terminated that way; sockets are closed with their channels and give
    up unsent messages after 100 ms.
    """
    context = zmq.asyncio.Context.instance()
    context.setsockopt(zmq.LINGER, 100)  # a default for new sockets: idempotent
    # a client connects before a new kernel has bound its sockets; zmq's default
    # 100 ms between connection attempts would add up to that to every (forked,
    # ~0.1 s) kernel start; back off to 1 s while a kernel stays unreachable
    context.setsockopt(zmq.RECONNECT_IVL, 5)
    context.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
    return context
