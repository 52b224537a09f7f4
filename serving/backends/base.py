"""The small interface every model backend implements; no Ray in here."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from controller.knobs import Knobs


@dataclass(frozen=True)
class ModelRequest:
    prompt: str
    max_new_tokens: int = 16
    image_b64: str | None = None


@dataclass(frozen=True)
class ModelOutput:
    text: str
    output_tokens: int
    # Milliseconds: "vision", "prefill", "decode", "total" (the core_exp names without the T_ prefix).
    timings_ms: dict[str, float] = field(default_factory=dict)


@runtime_checkable
class Backend(Protocol):
    """Runs batches in which every request has the same knobs. Implementations are synchronous;
    the model deployment calls them off the event loop."""

    name: str

    def validate_knobs(self, knobs: Knobs) -> None:
        """Raise controller.errors.KnobError naming the knob and the accepted range."""
        ...

    def generate_batch(self, knobs: Knobs, requests: list[ModelRequest]) -> list[ModelOutput]:
        """One output per request, in order. Never called with mixed knobs."""
        ...
