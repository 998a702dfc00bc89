"""The environment a kernel starts with: an allowlist of this process's variables, never its secrets.

A kernel runs whatever code it is given (a notebook handed to the dashboard, a
chat's model, a schedule), so it gets what code needs to run — paths, locale,
Python and thread settings, proxies, dsagent's own non-secret settings — and
not the server's API keys, tokens or cookie secret. Two settings decide:

- the backend's allowlist (``kernel_env_allow`` for ``local``,
  ``sandbox_env_allow`` for ``sandbox``): names and ``*`` globs; a name it
  matches that ``dsagent.secrets.looks_secret`` is still left out;
- ``kernel_env_passthrough``: what the user passes on purpose. An exact name
  passes even if it looks secret (``OPENAI_API_KEY`` for a notebook that calls
  the API); a glob passes only names that do not look secret.

The session's own ``env`` (``start_session(env=...)``) is added on top by the
backend. Remote backends (``jupyter``, ``e2b``) start kernels with the other
machine's environment; there ``drop_secrets_code`` removes secret-looking
names from the kernel's ``os.environ`` when the session is set up.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterable, Mapping

from dsagent.secrets import NOT_SECRET, SECRET_NAME, looks_secret

__all__ = ["drop_secrets_code", "kernel_environment", "patterns"]


def patterns(setting: str) -> list[str]:
    """A comma-separated names/globs setting as a list."""
    return [p.strip() for p in setting.split(",") if p.strip()]


def _matches(name: str, globs: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in globs)


def passes(name: str, allow: Iterable[str], passthrough: Iterable[str]) -> bool:
    """Whether variable ``name`` reaches a kernel (see the module docstring)."""
    passthrough = list(passthrough)
    if name in passthrough:
        return True
    if looks_secret(name):
        return False
    return _matches(name, allow) or _matches(name, passthrough)


def kernel_environment(allow: str, passthrough: str, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The variables of ``environ`` (default: this process's) a kernel may inherit."""
    environ = os.environ if environ is None else environ
    allowed, passed = patterns(allow), patterns(passthrough)
    return {k: v for k, v in environ.items() if passes(k, allowed, passed)}


def drop_secrets_code(passthrough: str, keep: Iterable[str] = ()) -> str:
    """Kernel-side Python (``os`` imported as ``_dsagent_os``) that removes secret-looking variables from ``os.environ``.

    For remote kernels, whose environment is the other machine's. ``keep``: names the
    session sets itself; exact names of ``passthrough`` stay too.
    """
    kept = sorted({*keep, *NOT_SECRET, *(p for p in patterns(passthrough) if not any(c in p for c in "*?["))})
    secret = f"__import__('re').search({SECRET_NAME.pattern!r}, k.upper())"
    return f"list(map(_dsagent_os.environ.pop, [k for k in _dsagent_os.environ if {secret} and k not in {kept!r}]))\n"
