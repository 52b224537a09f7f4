"""Errors of the model package; all are ControllerErrors, so they pickle across Ray intact."""

from __future__ import annotations

from controller.errors import ControllerError


class ModelLoadError(ControllerError):
    """A preset name, checkpoint path or model option is not usable."""


class InputTooLongError(ControllerError):
    """A request needs more tokens than the engine's largest shape holds (HTTP 413, not an OOM)."""

    def __init__(self, what: str, value: int, limit: int, hint: str) -> None:
        self.what, self.value, self.limit = what, value, limit
        super().__init__(f"{what}={value} exceeds the limit of {limit}; {hint}")


class ConfigDisabledError(ControllerError):
    """A knob config this replica cannot run (its graph capture failed); the reason says why."""

    def __init__(self, config: str, reason: str) -> None:
        self.config, self.reason = config, reason
        super().__init__(f"config {config} is disabled on this replica: {reason}")


class SampleFileError(ControllerError):
    def __init__(self, path: str, line: int, problem: str) -> None:
        super().__init__(f'{path}:{line}: {problem}; expected a JSON object with at least a "prompt" string')
