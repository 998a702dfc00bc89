"""The Panel dashboard (not built yet)."""
