"""The sandbox backend passes the same conformance kit as ``local``."""

import pytest

from dsagent.kernel_gateway.sandbox import SandboxBackend, probe
from dsagent.settings import Settings
from dsagent.testing.conformance import BackendConformance

pytestmark = pytest.mark.skipif(probe(Settings()) is not None, reason=f"bwrap cannot run here: {probe(Settings())}")


class TestSandboxConformance(BackendConformance):
    @pytest.fixture
    async def backend(self, tmp_path):
        # no preload: a pooled kernel per test would import numpy/pandas/matplotlib
        # in its warm-up for checks that do not use them (test_sandbox.py covers it);
        # one pooled kernel and no replacement after the handout (a cold sandboxed
        # kernel per test that no check would use), as the local kit does
        settings = Settings(home=str(tmp_path / "ws"), kernel_preload="", kernel_pool_replenish_delay=600)
        async with SandboxBackend(settings, pool_size=1) as backend:
            yield backend
