"""A missing optional package names the extra that installs it."""

from __future__ import annotations

import pytest

from controller.errors import MissingExtraError
from controller.optional import require


def test_present_module_is_returned() -> None:
    assert require("json", "dev").dumps([1]) == "[1]"


def test_missing_module_names_the_extra() -> None:
    with pytest.raises(MissingExtraError) as e:
        require("surely_not_installed_pkg_xyz", "plot")
    msg = str(e.value)
    assert "surely_not_installed_pkg_xyz" in msg and "'plot' extra" in msg and "pip install" in msg
    assert "\n" not in msg
    assert isinstance(e.value, ImportError)
