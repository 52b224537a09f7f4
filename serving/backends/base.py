"""The small interface every model backend implements; no Ray in here."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from controller.errors import KnobError
from controller.knobs import TIERS, Knobs


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


@dataclass(frozen=True)
class SupportedRanges:
    """What a backend can run, as plain data: the model deployment publishes it so that the
    controller can refuse a table holding a config the model would fail on (before any request)."""

    top_k: tuple[int, int]
    num_active_blocks: tuple[int, int]
    tiers: tuple[str, ...] = TIERS
    # Configs inside the ranges that the backend still cannot run (e.g. a failed graph capture).
    disabled: tuple[str, ...] = ()  # Knobs.key values

    def check(self, knobs: Knobs) -> None:
        """Raise KnobError naming the knob and the accepted range."""
        if knobs.tier not in self.tiers:
            raise KnobError("tier", knobs.tier, f"one of {', '.join(self.tiers)} (this model)")
        for name, (lo, hi) in (("top_k", self.top_k), ("num_active_blocks", self.num_active_blocks)):
            value = getattr(knobs, name)
            if not lo <= value <= hi:
                raise KnobError(name, value, f"an integer in [{lo}, {hi}] (this model)")
        if knobs.key in self.disabled:
            raise KnobError("knobs", knobs.key, "a config this model has not disabled")

    def check_configs(self, configs: list[Knobs]) -> None:
        """Raise KnobError for the first config outside the ranges, naming that config."""
        for k in configs:
            try:
                self.check(k)
            except KnobError as e:
                raise KnobError("config", k.key, f"configs this model can run: {e}") from e

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SupportedRanges:
        return cls(
            top_k=(int(d["top_k"][0]), int(d["top_k"][1])),
            num_active_blocks=(int(d["num_active_blocks"][0]), int(d["num_active_blocks"][1])),
            tiers=tuple(d["tiers"]),
            disabled=tuple(d.get("disabled", ())),
        )

    def to_dict(self) -> dict[str, object]:
        return {
            "tiers": list(self.tiers),
            "top_k": list(self.top_k),
            "num_active_blocks": list(self.num_active_blocks),
            "disabled": list(self.disabled),
        }


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
