"""The conformance kit against the e2b backend: the real E2B SDK in debug mode, a loopback server, real kernels."""

import pytest

pytest_plugins = ["e2b_fixtures"]  # the loopback server fixtures, shared by every e2b test module

from dsagent.kernel_gateway.e2b import E2BBackend
from dsagent.testing.conformance import BackendConformance


class TestE2BConformance(BackendConformance):
    @pytest.fixture
    async def backend(self, e2b_debug):
        async with E2BBackend() as backend:
            yield backend

    @pytest.fixture
    def new_work_dir(self, tmp_path) -> str:
        # a path inside the sandbox (the loopback server maps /home/user to a host folder)
        return f"/home/user/explicit/{tmp_path.name}/work-dir"
