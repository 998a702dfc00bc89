"""The sandbox backend passes the same conformance kit as ``local``."""

import pytest

from dsagent.kernel_gateway.sandbox import SandboxBackend, probe
from dsagent.settings import Settings
from dsagent.testing.conformance import BackendConformance

pytestmark = pytest.mark.skipif(probe(Settings()) is not None, reason=f"bwrap cannot run here: {probe(Settings())}")


class TestSandboxConformance(BackendConformance):
    @pytest.fixture
    async def backend(self, tmp_path):
        async with SandboxBackend(Settings(home=str(tmp_path / "ws")), pool_size=1) as backend:
            yield backend
