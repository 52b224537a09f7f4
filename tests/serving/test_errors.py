"""Errors the serving package raises belong to its hierarchy (serving/errors.py) and keep the
builtin types callers caught before."""

from __future__ import annotations

from pathlib import Path

import pytest

from serving.errors import NoTableError, ServingConfigError, ServingError
from serving.ingress.auth import ApiKeys


def test_an_unusable_api_keys_file_is_a_configuration_error(tmp_path: Path) -> None:
    short = tmp_path / "keys"
    short.write_text("too-short\n")
    for path in (short, tmp_path / "missing"):
        with pytest.raises(ServingConfigError, match="auth.api_keys_file="):
            ApiKeys.from_file(str(path))


def test_error_types_keep_their_builtin_bases() -> None:
    assert issubclass(ServingConfigError, ServingError) and issubclass(ServingConfigError, ValueError)
    assert issubclass(NoTableError, ServingError) and issubclass(NoTableError, RuntimeError)
