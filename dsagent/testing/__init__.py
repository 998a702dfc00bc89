"""Test kits: the backend conformance suite and (later) a scripted LLM server."""
