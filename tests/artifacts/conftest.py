"""Fixtures of the store tests (helpers live in store_helpers.py: a unique module name, so
`from ... import` cannot pick up another folder's conftest)."""

from store_helpers import settings, store  # noqa: F401 (fixtures)
