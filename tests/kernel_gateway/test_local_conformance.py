"""The conformance kit against the ``local`` backend (real ipykernels on this machine)."""

import pytest

from dsagent.kernel_gateway.local import LocalBackend
from dsagent.settings import Settings
from dsagent.testing.conformance import BackendConformance


class TestLocalConformance(BackendConformance):
    @pytest.fixture
    async def backend(self):
        # one pooled kernel, so sessions go through the pool's handout (chdir + env
        # set in a running kernel); the replacement would only cost CPU here
        async with LocalBackend(Settings(kernel_pool_replenish_delay=600), pool_size=1) as backend:
            yield backend
