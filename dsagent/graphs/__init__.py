"""LangGraph agents: the analysis agent with its tools, reviewer, notebook export and resume.

``runner.execute_agent_run``/``dsagent.ask`` run one; ``docs/architecture.md`` ("Agents") maps the modules.
"""
