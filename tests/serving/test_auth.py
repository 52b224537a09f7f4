"""ApiKeys: which paths are open and which Authorization values pass (issue 19 item 9). The same
rules on a real local Serve: tests/serving/test_security.py."""

from __future__ import annotations

import pytest

from serving.ingress.auth import ApiKeys

KEY = "k" * 32


@pytest.mark.parametrize(
    ("path", "root_path", "is_open"),
    [
        ("/healthz", "", True),
        ("/sec/healthz", "/sec", True),
        ("/healthz/", "", False),  # FastAPI would redirect it: not the probe path itself
        ("/v1/stats/healthz", "", False),
        ("/x/healthz", "", False),
        ("/sec/v1/healthz", "/sec", False),
        ("/sec/healthz", "", False),  # no route prefix: /sec/healthz is some other path
        ("/secret/healthz", "/sec", False),
        ("/v1/generate", "", False),
    ],
)
def test_only_the_exact_health_path_is_open(path: str, root_path: str, is_open: bool) -> None:
    assert ApiKeys.is_open(path, root_path) is is_open


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "bEaReR"])
def test_the_bearer_scheme_is_case_insensitive(scheme: str) -> None:
    keys = ApiKeys([KEY.encode()])
    assert keys.allows(f"{scheme} {KEY}")
    assert keys.allows(f"{scheme}   {KEY}  ")


@pytest.mark.parametrize("value", [None, "", KEY, f"Basic {KEY}", "Bearer", "Bearer ", f"Bearer {KEY}x",
                                   f"Bearerx {KEY}", f"Token {KEY}"])
def test_other_values_do_not_pass(value: str | None) -> None:
    assert not ApiKeys([KEY.encode()]).allows(value)
