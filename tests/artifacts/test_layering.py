"""The store's modules import one way, and no private name crosses a module boundary (issue 17 part 3).

Read from the source with ``ast`` (every import: at module level, inside
functions, under ``TYPE_CHECKING``), so an import hidden in a function to
dodge a cycle is caught too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import dsagent.artifacts

PACKAGE = "dsagent.artifacts"
FOLDER = Path(dsagent.artifacts.__file__).parent


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


class _Imports(ast.NodeVisitor):
    """Sibling modules a module imports (``runtime``: not only under ``if TYPE_CHECKING``), and private names it reaches."""

    def __init__(self, siblings: set[str]) -> None:
        self.siblings = siblings
        self.runtime: dict[str, int] = {}  # sibling -> first line
        self.private: list[str] = []
        self._typing_only = 0
        self._module_names: dict[str, str] = {}  # local name -> sibling module it is bound to
        self.own: set[str] = set()  # private names this module defines itself (``db._x`` on its own class is fine)

    def visit(self, node: ast.AST) -> None:
        if isinstance(node, ast.Module):
            for sub in ast.walk(node):
                if isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    self.own.add(sub.name)
                elif isinstance(sub, ast.Attribute) and isinstance(sub.ctx, ast.Store):
                    self.own.add(sub.attr)
                elif isinstance(sub, ast.Name) and isinstance(sub.ctx, ast.Store):
                    self.own.add(sub.id)
                elif isinstance(sub, ast.AnnAssign) and isinstance(sub.target, ast.Name):
                    self.own.add(sub.target.id)
        super().visit(node)

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):
            self._typing_only += 1
            for child in node.body:
                self.visit(child)
            self._typing_only -= 1
            for child in node.orelse:
                self.visit(child)
        else:
            self.generic_visit(node)

    def _uses(self, sibling: str, line: int) -> None:
        if not self._typing_only:
            self.runtime.setdefault(sibling, line)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            parts = alias.name.split(".")
            if alias.name.startswith(PACKAGE + ".") and len(parts) == 3:
                self._uses(parts[2], node.lineno)
                if alias.asname:
                    self._module_names[alias.asname] = parts[2]

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        module = node.module or ""
        if node.level:  # relative: "from .store import x" / "from . import store"
            module = PACKAGE + ("." + module if module else "")
        if module == PACKAGE:
            for alias in node.names:
                if alias.name in self.siblings:
                    self._uses(alias.name, node.lineno)
                    self._module_names[alias.asname or alias.name] = alias.name
                elif alias.name.startswith("_"):
                    self.private.append(f"line {node.lineno}: from {module} import {alias.name}")
        elif module.startswith(PACKAGE + "."):
            sibling = module.split(".")[2]
            self._uses(sibling, node.lineno)
            for alias in node.names:
                if alias.name.startswith("_"):
                    self.private.append(f"line {node.lineno}: from {module} import {alias.name}")

    def visit_Attribute(self, node: ast.Attribute) -> None:
        # ``schema._X`` on a sibling module, or ``store._lock`` / ``self.store._session`` on another object:
        # a private name of another module's thing. ``self._x`` and ``cls._x`` are the module's own.
        if node.attr.startswith("_") and not node.attr.startswith("__") and node.attr not in self.own:
            owner = node.value
            if not (isinstance(owner, ast.Name) and owner.id in ("self", "cls")):
                self.private.append(f"line {node.lineno}: {ast.unparse(node)}")
        self.generic_visit(node)


def _modules() -> dict[str, _Imports]:
    files = {p.stem: p for p in FOLDER.glob("*.py") if p.stem != "__init__"}
    found = {}
    for name, path in files.items():
        visitor = _Imports(set(files))
        visitor.visit(ast.parse(path.read_text(), str(path)))
        visitor.runtime.pop(name, None)
        found[name] = visitor
    return found


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_the_store_modules_import_one_way():
    modules = _modules()
    graph = {name: set(v.runtime) for name, v in modules.items()}
    cycle = _cycle(graph)
    assert cycle is None, (
        f"dsagent/artifacts modules import each other in a circle: {' -> '.join(cycle)}; "
        f"the import at {cycle[0]}.py line {modules[cycle[0]].runtime[cycle[1]]} goes the wrong way "
        "(move what both need into a lower module, e.g. rows.py or connection.py)")


def test_no_private_name_crosses_a_module_boundary():
    offences = [f"{name}.py {what}" for name, v in sorted(_modules().items()) for what in v.private]
    assert offences == [], "private (underscore) names used from another module; give them a public name:\n" + "\n".join(offences)


def test_the_connection_owner_sits_below_the_store():
    """What the issue asks for by name: one owner of the locked connection, which imports none of its users."""
    modules = _modules()
    assert set(modules["connection"].runtime) <= {"turns"}
    users = {name for name, v in modules.items() if "connection" in v.runtime}
    assert {"store", "compact", "blobstore"} <= users


@pytest.mark.parametrize("source, problem", [
    ("from dsagent.artifacts.store import _x\n", "private"),
    ("def f():\n    from dsagent.artifacts import store\n    return store._session\n", "private"),
    ("import dsagent.artifacts.store as s\n", "runtime"),
    ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from dsagent.artifacts.store import Store\n", "typing only"),
], ids=["private-import", "private-attribute", "plain-import", "type-checking"])
def test_the_checker_sees_what_it_must(source, problem):
    """The checks above cannot pass vacuously: each kind of import is recognised."""
    visitor = _Imports({"store", "transaction"})
    visitor.visit(ast.parse(source))
    if problem == "private":
        assert visitor.private and "store" in visitor.runtime
    elif problem == "runtime":
        assert visitor.runtime == {"store": 1}
    else:
        assert visitor.runtime == {} and visitor.private == []
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
