"""End-to-end tests share the serving tests' Ray setup and their one Serve instance."""

from tests.serving.conftest import serve_port  # noqa: F401  (a fixture, re-exported)
