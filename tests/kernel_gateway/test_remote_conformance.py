"""The conformance kit against a real Kernel Gateway and a real Jupyter Server on loopback."""

import pytest
from remote_servers import RunningServer, jupyter_server, kernel_gateway, no_kernel_leaks  # noqa: F401 (fixtures)

from dsagent.kernel_gateway.remote import JupyterBackend
from dsagent.testing.conformance import BackendConformance


class TestKernelGatewayConformance(BackendConformance):
    @pytest.fixture
    async def backend(self, kernel_gateway: RunningServer):  # noqa: F811
        with no_kernel_leaks(kernel_gateway):
            async with JupyterBackend(url=kernel_gateway.url, token=kernel_gateway.token) as backend:
                yield backend


class TestJupyterServerConformance(BackendConformance):
    @pytest.fixture
    async def backend(self, jupyter_server: RunningServer):  # noqa: F811
        with no_kernel_leaks(jupyter_server):
            async with JupyterBackend(url=jupyter_server.url, token=jupyter_server.token) as backend:
                yield backend
