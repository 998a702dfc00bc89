"""Fixtures of the notebook-run tests (helpers live in notebook_helpers.py: a unique module name, so
`from ... import` cannot pick up another folder's conftest)."""

from notebook_helpers import settings  # noqa: F401 (fixture)
