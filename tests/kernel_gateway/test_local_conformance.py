import pytest

from dsagent.kernel_gateway.local import LocalBackend
from dsagent.testing.conformance import BackendConformance


class TestLocalConformance(BackendConformance):
    @pytest.fixture
    async def backend(self):
        async with LocalBackend(pool_size=1) as backend:
            yield backend
