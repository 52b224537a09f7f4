"""The small interface every model backend implements; no Ray in here."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from controller.knobs import Knobs
from serving.wire import SupportedRanges


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
    # Tokens the model read (vision + prompt), for usage reports; 0 where a backend cannot say.
    prompt_tokens: int = 0
    # "stop" (end of sequence), "length" (max_new_tokens reached) or "cancelled" (the client left).
    finish_reason: str = "length"


# A streaming backend calls this with the text decoded so far after the first token and after each
# further one; a False return stops the generation (the client went away).
OnText = Callable[[str], bool]


@runtime_checkable
class Backend(Protocol):
    """Runs batches in which every request has the same knobs. Implementations are synchronous;
    the model deployment calls them off the event loop."""

    name: str

    def validate_knobs(self, knobs: Knobs) -> None:
        """Raise controller.errors.KnobError naming the knob and the accepted range."""
        ...

    def supported_ranges(self) -> SupportedRanges:
        """The knob ranges validate_knobs accepts (plus configs it refuses inside them)."""
        ...

    def generate_batch(self, knobs: Knobs, requests: list[ModelRequest]) -> list[ModelOutput]:
        """One output per request, in order. Never called with mixed knobs."""
        ...
