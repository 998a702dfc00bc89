"""LangGraph agents: coding, analysis, review and team graphs (not built yet)."""
