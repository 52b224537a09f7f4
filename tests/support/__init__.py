"""Helpers shared by tests (not shipped in any package)."""
