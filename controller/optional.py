"""Optional dependencies: a missing one says which extra installs it."""

from __future__ import annotations

import importlib
from types import ModuleType

from controller.errors import MissingExtraError


def require(module: str, extra: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingExtraError(
            f"{module} is not installed; install the '{extra}' extra: "
            f"pip install 'moe-budget-controller[{extra}]'"
        ) from e
