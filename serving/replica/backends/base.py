"""The small interface every model backend implements; no Ray in here."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from controller.knobs import Knobs
from serving.wire import SupportedRanges


@dataclass(frozen=True)
class ModelRequest:
    prompt: str
    max_new_tokens: int = 16
    image_b64: str | None = None
    # The table's figures for the request's knobs (None where unknown, e.g. the fallback): a
    # simulated model sleeps them; a real one ignores them.
    expected_ms: float | None = None
    decode_ms_per_token: float | None = None


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


# A streamed request's sink: the backend calls it with the NEW text of each step (never the text so
# far), or with "" on a step that added none, only to ask whether the reader is still there; a
# False return stops that request at this step (its client went away). Called on the backend's
# thread: it must not block.
OnText = Callable[[str], bool]


@runtime_checkable
class Session(Protocol):
    """A running decode batch of one knob pair (top_k, num_active_blocks) on the device. Work joins
    it between steps (`join` runs the newcomers' prefill at once, so their first token does not
    wait for the others' decode) and leaves it when done; the device thread drives it."""

    knobs: Knobs

    @property
    def active(self) -> bool:
        """Members still decoding."""
        ...

    def join(self, knobs: Knobs, requests: list[ModelRequest], sinks: Sequence[OnText | None]) -> list[int] | None:
        """Prefill `requests` (all of them, or none) into this batch; their member ids, or None when
        they cannot join (another knob pair, no free row, no room left in the cache)."""
        ...

    def step(self) -> None:
        """One decode step for every member."""
        ...

    def finished(self) -> dict[int, ModelOutput]:
        """Members that finished since the last call, by id."""
        ...

    def remaining_ms(self) -> float:
        """Expected time until every member has finished."""
        ...

    @property
    def remaining_steps(self) -> int:
        """Decode steps until every member has finished (at most: a member may end sooner)."""
        ...

    def close(self) -> None:
        """Release what the session holds (the engine's batch)."""
        ...


def run_to_end(session: Session, knobs: Knobs, requests: list[ModelRequest],
               sinks: Sequence[OnText | None] | None) -> list[ModelOutput]:
    """A whole batch on a fresh session: join, step until done (the generate_batch of a backend)."""
    ids = session.join(knobs, requests, list(sinks) if sinks is not None else [None] * len(requests))
    if ids is None:
        raise RuntimeError(f"a fresh session refused its first batch ({knobs.key})")
    done: dict[int, ModelOutput] = dict(session.finished())
    try:
        while session.active:
            session.step()
            done.update(session.finished())
    finally:
        session.close()
    return [done[i] for i in ids]


@runtime_checkable
class Backend(Protocol):
    """Runs batches in which every request has the same knobs, streamed members and whole ones in
    the same call (one device: a stream is a batch member, never a second path). Implementations
    are synchronous and serialise their calls; the model deployment calls them off the event loop."""

    name: str
    # True when `prepare` does real work before traffic (CUDA graph capture) and again after each
    # published table; the model deployment then runs an EnginePreparer for it.
    needs_preparation: bool
    # How many sessions (decode batches of different knob pairs) the device can hold at once, and
    # how many requests one holds.
    max_sessions: int
    max_batch_rows: int

    def open_session(self, knobs: Knobs) -> Session:
        """A new, empty decode batch for `knobs`' pair (at most max_sessions open at once)."""
        ...

    def validate_knobs(self, knobs: Knobs) -> None:
        """Raise controller.errors.KnobError naming the knob and the accepted range."""
        ...

    def check_request(self, knobs: Knobs, request: ModelRequest) -> None:
        """Raise (e.g. moe.errors.InputTooLongError) for a request these knobs cannot run, before
        it joins a batch."""
        ...

    def supported_ranges(self) -> SupportedRanges:
        """The knob ranges validate_knobs accepts (plus configs it refuses inside them)."""
        ...

    def crops_for(self, knobs: Knobs, request: ModelRequest) -> int | None:
        """The image crops the request runs with at these knobs (None: no image)."""
        ...

    def first_token_ms(self, timings: dict[str, float], service_ms: float) -> float:
        """The part of a call of `service_ms` that the table's latency describes."""
        ...

    def preparing(self) -> bool:
        """True while `prepare` waits for the device: the device then opens and joins no batch, so
        that its batches drain and the preparation gets its turn."""
        ...

    def prepare(self, configs: list[Knobs]) -> dict[str, Any]:
        """Make `configs` ready to serve (idempotent); a report for engine_stats."""
        ...

    def stats(self) -> dict[str, Any]:
        """Engine figures for /v1/stats ({} where there are none)."""
        ...

    def generate_batch(
        self, knobs: Knobs, requests: list[ModelRequest], sinks: Sequence[OnText | None] | None = None
    ) -> list[ModelOutput]:
        """One output per request, in order. Never called with mixed knobs. `sinks` (one per request,
        None for a request answered whole) get each streamed member's new text as it is decoded."""
        ...
