"""Find kernel backends through the ``dsagent.kernel_backends`` entry point group.

Built-ins are registered the same way (in pyproject.toml) as third-party
plugins; the registry fills itself lazily on first use, never at import.
"""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points
from typing import Any

from dsagent.errors import BackendNotFound
from dsagent.kernel_gateway.base import KernelBackend
from dsagent.settings import Settings

__all__ = ["BackendRegistry", "backend_registry", "get_backend", "ENTRY_POINT_GROUP"]

ENTRY_POINT_GROUP = "dsagent.kernel_backends"


def _discover() -> dict[str, EntryPoint]:
    """Entry points of installed backends (tests monkeypatch this)."""
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


class BackendRegistry:
    """Name -> backend class; ``register`` adds one by hand, ``get`` looks one up."""

    def __init__(self) -> None:
        self._classes: dict[str, type[KernelBackend]] = {}
        self._entry_points: dict[str, EntryPoint] | None = None

    def _eps(self) -> dict[str, EntryPoint]:
        if self._entry_points is None:
            self._entry_points = _discover()
        return self._entry_points

    def register(self, name: str, cls: type[KernelBackend]) -> None:
        self._classes[name] = cls

    def names(self) -> list[str]:
        return sorted(set(self._classes) | set(self._eps()))

    def get(self, name: str) -> type[KernelBackend]:
        if name in self._classes:
            return self._classes[name]
        ep = self._eps().get(name)
        if ep is None:
            raise BackendNotFound(name, self.names())
        cls = ep.load()
        self._classes[name] = cls
        return cls


backend_registry = BackendRegistry()


def get_backend(name: str | None = None, settings: Settings | None = None, **options: Any) -> KernelBackend:
    """An instance of the backend named ``name`` (default: the ``backend`` setting)."""
    settings = settings or Settings()
    return backend_registry.get(name or settings.backend)(settings, **options)
