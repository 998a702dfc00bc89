"""Kernels get an allowlisted environment: the secrets of the process that starts them stay out, on every backend.

Secrets are planted in this process's environment before any backend (or the
Jupyter server) starts; real kernels then print their ``os.environ`` and
``/proc/self/environ`` (a forked kernel's is its template's) and the test looks
for the planted values.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from remote_servers import start_server, stop_server

from dsagent.kernel_gateway.kernel_env import kernel_environment
from dsagent.kernel_gateway.local import LocalBackend
from dsagent.kernel_gateway.remote import JupyterBackend
from dsagent.kernel_gateway.sandbox import SandboxBackend, probe
from dsagent.secrets import looks_secret
from dsagent.settings import Settings

PLANTED = {
    "PLANTED_API_KEY": "planted-api-key-0001",
    "OPENAI_API_KEY": "sk-planted-openai-0002",
    "E2B_API_KEY": "e2b-planted-key-0003",
    "DSAGENT_JUPYTER_TOKEN": "planted-jupyter-token-0004",
    "DSAGENT_DASHBOARD_COOKIE_SECRET": "planted-cookie-secret-0005",
    "DB_PASSWORD_MAIN": "planted-password-0006",
    "PLAIN_TOKEN": "planted-plain-token-0007",  # matched by the passthrough glob PLAIN_*, yet a secret: stays out
}
WANTED = {"WANTED_API_KEY": "wanted-api-key-0008", "PLAIN_SETTING": "plain-setting-0009"}
PASSTHROUGH = "WANTED_API_KEY,PLAIN_*"

SHOW_ENV = """
import json as _j, os as _o
def _environ(pid):
    try:
        return open('/proc/%s/environ' % pid, 'rb').read().decode('utf-8', 'replace')
    except OSError as exc:  # the sandbox's parent is bwrap, of another user
        return repr(exc)
print(_j.dumps({'env': dict(_o.environ), 'proc': _environ('self'), 'parent': _environ(_o.getppid())}))
"""

pytestmark = pytest.mark.xdist_group("kernel-env")


@pytest.fixture(scope="module", autouse=True)
def planted_secrets() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        for name, value in {**PLANTED, **WANTED}.items():
            patch.setenv(name, value)
        patch.setenv("DSAGENT_KERNEL_ENV_PASSTHROUGH", PASSTHROUGH)
        yield


async def kernel_view(session) -> dict[str, object]:
    result = await session.execute(SHOW_ENV)
    assert result.ok, result
    return json.loads(result.stream_text())


def assert_no_secret_in(text: str) -> None:
    for name, value in PLANTED.items():
        assert value not in text, f"{name} reached the kernel"


def assert_allowlisted(view: dict[str, object], *, proc: bool = True) -> None:
    env = view["env"]
    assert isinstance(env, dict) and "PATH" in env  # the allowlist lets ordinary variables through
    assert_no_secret_in(json.dumps(env))
    if proc:
        assert_no_secret_in(str(view["proc"]))
    assert env.get("WANTED_API_KEY") == WANTED["WANTED_API_KEY"]  # named exactly in the passthrough: passes
    assert env.get("PLAIN_SETTING") == WANTED["PLAIN_SETTING"]


def test_the_rule_keeps_secret_names_out_unless_named_exactly():
    environ = {**PLANTED, **WANTED, "PATH": "/bin", "DSAGENT_HOME": "/w", "LC_ALL": "C", "SSH_AUTH_SOCK": "/tmp/s"}
    env = kernel_environment("PATH,LC_*,DSAGENT_*,*AUTH*", PASSTHROUGH, environ)
    assert env == {"PATH": "/bin", "DSAGENT_HOME": "/w", "LC_ALL": "C", "SSH_AUTH_SOCK": "/tmp/s", **WANTED}
    # even "*" in the passthrough passes no secret-looking name; only an exact name does
    assert not set(PLANTED) & set(kernel_environment("", "*", environ))


@pytest.mark.parametrize("name", ["OPENAI_API_KEY", "OPENAI_ORG_ID", "E2B_API_KEY", "AWS_ACCESS_KEY_ID", "DSAGENT_JUPYTER_TOKEN",
                                  "DSAGENT_DASHBOARD_COOKIE_SECRET", "DB_PASSWORD", "GITHUB_TOKEN", "my_api_key"])
def test_secret_names(name):
    assert looks_secret(name)


@pytest.mark.parametrize("name", ["PATH", "HOME", "OPENAI_BASE_URL", "E2B_DOMAIN", "AWS_DEFAULT_REGION", "SSH_AUTH_SOCK", "DSAGENT_HOME"])
def test_names_that_say_where_not_what(name):
    assert not looks_secret(name)  # redacting a base URL would blank every "cannot connect to ..." message


async def test_local_forked_kernels_and_their_template_get_no_secrets():
    async with LocalBackend(Settings(), pool_size=0) as backend:
        await backend.warm()  # the template starts now, so the session's kernel is its fork
        async with await backend.start_session() as session:
            assert session._kernel.km.forked
            view = await kernel_view(session)
    assert_allowlisted(view)
    assert "PATH=" in view["parent"]  # the template's own environment, read
    assert_no_secret_in(str(view["parent"]))


async def test_local_launched_kernels_get_no_secrets():
    async with LocalBackend(Settings(kernel_fork=False), pool_size=1) as backend:
        async with await backend.start_session(env={"SESSION_TOKEN_GIVEN": "given-by-the-session-01"}) as session:
            view = await kernel_view(session)
    assert_allowlisted(view)
    assert view["env"]["SESSION_TOKEN_GIVEN"] == "given-by-the-session-01"  # the session's own env is the caller's to pass


@pytest.mark.skipif(probe(Settings()) is not None, reason="bwrap cannot run here")
async def test_sandbox_kernels_get_no_secrets():
    async with SandboxBackend(Settings(), pool_size=0) as backend:
        async with await backend.start_session() as session:
            view = await kernel_view(session)
    assert_allowlisted(view)


async def test_jupyter_server_kernels_lose_the_servers_secrets(tmp_path: Path):
    server, process = start_server("server", tmp_path)  # its own: started with the planted environment
    try:
        async with JupyterBackend(url=server.url, token=server.token) as backend:
            async with await backend.start_session(env={"SESSION_TOKEN_GIVEN": "given-by-the-session-01"}) as session:
                view = await kernel_view(session)
    finally:
        stop_server(process)
    # the server's kernels start with its environment; dsagent removes the secrets from os.environ
    assert_allowlisted(view, proc=False)
    assert view["env"]["SESSION_TOKEN_GIVEN"] == "given-by-the-session-01"
    assert os.environ["PLANTED_API_KEY"] == PLANTED["PLANTED_API_KEY"]  # (the server had them to lose)
