"""A kernel provisioner for Jupyter servers: their kernels become forks of dsagent's preloaded template.

A Jupyter Server or Kernel Gateway starts each kernel through the kernelspec's
provisioner (jupyter_client's documented extension point). Naming this one in
a kernelspec gives that server what the ``local`` backend has: a new kernel in
tens of milliseconds with ``kernel_preload`` already imported, instead of a
cold interpreter (~1 s)::

    {"argv": ["python", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
     "display_name": "Python 3 (forked)", "language": "python",
     "metadata": {"kernel_provisioner": {"provisioner_name": "dsagent-fork"}}}

It is jupyter_client's ``LocalProvisioner`` whose process is a
``ForkedProcess`` (see ``forkserver``): interrupt, restart, shutdown and
death detection are the stock ones. The server's first kernel waits for the
template to start; a kernel that cannot be forked (the template failed to
start, a kernelspec that is not ``python -m ipykernel_launcher``) launches the
normal way, logged once.

The test suite runs its Kernel Gateway and Jupyter Server with it, so the
``jupyter`` backend's tests do not pay a cold interpreter per session; one test
keeps a stock kernelspec.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from jupyter_client.connect import KernelConnectionInfo
from jupyter_client.provisioning import LocalProvisioner

from dsagent.kernel_gateway.forkserver import ForkedProcess, ForkFailed, adopted_connection, fork_kernel, forkable, preload_list, warn_once
from dsagent.settings import Settings

#: the name kernelspecs use (``metadata.kernel_provisioner.provisioner_name``), an entry point in pyproject.toml
PROVISIONER_NAME = "dsagent-fork"


class ForkingProvisioner(LocalProvisioner):  # type: ignore[misc]
    """``LocalProvisioner`` that forks ``python -m ipykernel_launcher`` kernels from the template of their configuration."""

    _launched = False  # a later launch is a restart: the server's channels keep the sockets of the first

    async def launch_kernel(self, cmd: list[str], **kwargs: Any) -> KernelConnectionInfo:
        adoptable, self._launched = (None if self._launched else self.connection_info), True
        if forkable(cmd):
            try:
                process = await asyncio.to_thread(self._spawn, cmd, kwargs, adoptable)
            except ForkFailed as exc:
                warn_once(str(exc))
            else:
                self.process, self.pid, self.pgid = process, process.pid, process.pid  # the child calls setsid()
                self.cwd = kwargs.get("cwd") or os.getcwd()
                if process.connection is not None:  # the template's spare: the manager adopts its sockets and key
                    self.connection_info = adopted_connection(self.connection_info, process.connection)
                return self.connection_info
        else:
            warn_once(f"the kernelspec does not start `python -m ipykernel_launcher` ({cmd[:3]})")
        return await super().launch_kernel(cmd, **kwargs)

    @staticmethod
    def _spawn(cmd: list[str], kwargs: dict[str, Any], adoptable: KernelConnectionInfo | None) -> ForkedProcess:
        # a server's first kernel waits for the template to start (~1-2 s; a cold launch costs ~1 s):
        # a server is long-lived, its later kernels are forks
        settings = Settings()  # this server's environment (DSAGENT_KERNEL_PRELOAD, ...) and dsagent.toml
        preload = preload_list(settings.kernel_preload)
        return fork_kernel(
            cmd, kwargs, preload, settings.kernel_fork_idle, settings.kernel_start_timeout, wait_for_template=True, adoptable=adoptable
        )
