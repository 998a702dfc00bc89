"""langgraph.json names graphs that load, as LangGraph's tooling loads them (file path : factory)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_graph_in_langgraph_json_loads_with_its_nodes():
    config = json.loads((ROOT / "langgraph.json").read_text())
    expected = {"analysis": {"start", "setup", "plan", "act", "tools", "review", "finish"},
                "coding": {"start", "setup", "plan", "act", "tools", "review", "finish"},
                "team": {"route", "setup", "plan", "act", "tools", "review", "finish"},
                "review": {"review"}}
    assert set(config["graphs"]) == set(expected)
    for name, target in config["graphs"].items():
        path, factory = target.rsplit(":", 1)
        spec = importlib.util.spec_from_file_location(f"lg_{name}", ROOT / path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        graph = getattr(module, factory)()
        assert set(graph.get_graph().nodes) - {"__start__", "__end__"} == expected[name], name
