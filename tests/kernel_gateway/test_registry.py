from importlib.metadata import EntryPoint

import pytest

from dsagent.errors import BackendNotFound
import dsagent.kernel_gateway.registry as registry_module
from dsagent.kernel_gateway.local import LocalBackend
from dsagent.kernel_gateway.registry import BackendRegistry, get_backend


def test_builtin_local_is_found_through_its_entry_point():
    assert "local" in registry_module.backend_registry.names()
    assert registry_module.backend_registry.get("local") is LocalBackend


def test_unknown_backend_names_the_known_ones():
    with pytest.raises(BackendNotFound) as info:
        get_backend("no-such-backend")
    assert "no-such-backend" in str(info.value) and "local" in str(info.value)
    assert "local" in info.value.known


def test_discovery_is_lazy_and_monkeypatchable(monkeypatch):
    calls = []

    def fake_discover():
        calls.append(1)
        return {"fake": EntryPoint("fake", "dsagent.kernel_gateway.local:LocalBackend", "dsagent.kernel_backends")}

    monkeypatch.setattr(registry_module, "_discover", fake_discover)
    reg = BackendRegistry()
    assert calls == []  # nothing happens at construction
    assert reg.names() == ["fake"]
    assert reg.get("fake") is LocalBackend
    reg.register("manual", LocalBackend)
    assert reg.names() == ["fake", "manual"] and len(calls) == 1
