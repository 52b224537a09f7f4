"""Backends by name; the torch one is imported only when asked for."""

from __future__ import annotations

import importlib
from typing import Any

from controller.optional import require
from serving.errors import ServingConfigError
from serving.replica.backends.base import Backend

# name -> (module, class, extra that installs its dependencies or None)
BACKENDS: dict[str, tuple[str, str, str | None]] = {
    "simulated": ("serving.replica.backends.simulated", "SimulatedBackend", None),
    "torch": ("serving.replica.backends.torch_backend", "TorchBackend", "torch"),
}


def create_backend(name: str, options: dict[str, Any] | None = None) -> Backend:
    try:
        module_name, class_name, extra = BACKENDS[name]
    except KeyError:
        known = ", ".join(BACKENDS)
        raise ServingConfigError(f"model.backend={name!r} is not known; expected one of {known}") from None
    if extra is not None:
        require("torch", extra)
    cls = getattr(importlib.import_module(module_name), class_name)
    backend = cls(**(options or {}))
    if not isinstance(backend, Backend):
        raise TypeError(f"{module_name}.{class_name} does not implement the Backend protocol")
    return backend
