"""A CPU stand-in for the MoE model: latency from a cost model of tier, top_k and blocks, or
calibrated to the lookup table's expected latency of each config."""

from __future__ import annotations

import hashlib
import itertools
import math
import random
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from controller.errors import KnobError
from controller.knobs import TIER_CROP_RANGE, Knobs, vision_tokens
from moe.errors import ConfigDisabledError
from serving.replica.backends.base import ModelOutput, ModelRequest, OnText, run_to_end
from serving.wire import SupportedRanges


class SimulatedOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    num_blocks: int = Field(default=16, ge=1)
    num_experts: int = Field(default=64, ge=1)
    # Multiplies every simulated duration; 0 makes the model answer at once (overhead benchmarks).
    latency_scale: float = Field(default=1.0, ge=0)
    # "cost_model": the formula below. "table": the expected_latency_ms of the config in the table
    # the router resolved with (times latency_scale, with lognormal jitter), so that simulated model
    # times follow the table; requests without a table latency (fallback) use the cost model.
    latency_source: Literal["cost_model", "table"] = "cost_model"
    # Sigma of the multiplicative lognormal jitter in "table" mode (median stays at the table value).
    jitter_sigma: float = Field(default=0.05, ge=0, le=1)
    # Multiplies every duration on top of latency_scale: 1.3 simulates a model that got 30% slower
    # than its table (drift), for tests and benchmarks of live recalibration.
    slowdown: float = Field(default=1.0, gt=0, le=100)
    # Per-replica slowdown on top of `slowdown`, keyed by the replica's rank in its deployment
    # (Serve's ReplicaContext.rank: 0..n-1, kept by a replacement), e.g. {1: 2.0}: the second
    # replica runs 2x slower (a weaker or busier GPU, for tests and benchmarks of replica choice).
    slow_replica_ranks: dict[int, float] = Field(default_factory=dict, max_length=1024)
    # "in_table_latency": in table mode the table latency is the whole call (split into vision,
    # prefill and decode). "per_token": it is the first token (vision + prefill, the table's default
    # metric) and decode adds max_new_tokens x the table's decode ms/token, where the table has it.
    decode: Literal["in_table_latency", "per_token"] = "in_table_latency"
    # "request": each request's table latency is the model's speed. "first_table": the first table
    # latency seen per config is, from then on, the model's true speed, so that a recalibrated table
    # (which already holds the slowdown) does not feed back into the simulated model.
    ground_truth: Literal["request", "first_table"] = "request"
    # Decode batches of different knob pairs the device holds at once, stepped in turn (the torch
    # engine's decode_slots): 1 runs one batch at a time; 2 lets a pair start beside a long stream
    # of another pair, both then running at the pace of the two together.
    decode_slots: int = Field(default=1, ge=1, le=4)
    seed: int = 0

    @field_validator("slow_replica_ranks")
    @classmethod
    def _check_ranks(cls, v: dict[int, float]) -> dict[int, float]:
        for rank, factor in v.items():
            if rank < 0:
                raise ValueError(f"slow_replica_ranks key {rank} is not a replica rank; ranks are 0, 1, 2, ...")
            if not (math.isfinite(factor) and 0 < factor <= 100):
                raise ValueError(f"slow_replica_ranks[{rank}]={factor} must be a factor in (0, 100], e.g. 2.0")
        return v
    # Configs (Knobs.key, e.g. "high_8_16") this replica cannot run, as a torch replica whose graph
    # capture failed for them: refused per request, and reported so the router never picks them.
    disabled_configs: list[str] = Field(default_factory=list, max_length=1000)
    # Cost model, milliseconds at scale 1: roughly MolmoE-1B on an H100 for a short answer.
    vision_ms_per_token: float = Field(default=0.02, ge=0)
    prefill_ms_per_token_block: float = Field(default=0.0015, ge=0)
    decode_ms_per_token_block: float = Field(default=0.9, ge=0)
    prompt_tokens: int = Field(default=64, ge=0)


class SimulatedBackend:
    name = "simulated"
    needs_preparation = False
    # Members of a batch are not limited; batches at once are (decode_slots, as the torch engine).
    max_batch_rows = 1_000_000

    def __init__(self, **options: object) -> None:
        self.options = SimulatedOptions.model_validate(options)
        self.max_sessions = self.options.decode_slots
        self._open: list[SimulatedSession] = []  # sessions open now: one's device time stalls the others
        self._rng = random.Random(self.options.seed)
        self._rng_lock = threading.Lock()
        # One device: one call at a time, as a GPU serialises its kernels (and the engine its calls).
        self._device = threading.Lock()
        self._truth: dict[Knobs, tuple[float, float | None]] = {}  # ground_truth "first_table"
        self.rank = _replica_rank()
        self.slowdown = self.options.slowdown * (
            self.options.slow_replica_ranks.get(self.rank, 1.0) if self.rank is not None else 1.0
        )

    def validate_knobs(self, knobs: Knobs) -> None:
        o = self.options
        if not 1 <= knobs.top_k <= o.num_experts:
            raise KnobError("top_k", knobs.top_k, f"an integer in [1, {o.num_experts}] (experts per layer)")
        if not 1 <= knobs.num_active_blocks <= o.num_blocks:
            raise KnobError("num_active_blocks", knobs.num_active_blocks, f"an integer in [1, {o.num_blocks}]")
        if knobs.key in o.disabled_configs:
            raise ConfigDisabledError(knobs.key, "disabled by the simulated backend's disabled_configs option")

    def first_token_ms(self, timings: dict[str, float], service_ms: float) -> float:
        """What the table's latency stands for here: the whole call when the table latency is the
        whole call ("in_table_latency"), else the first token (vision + prefill)."""
        if self.options.decode == "in_table_latency":
            return service_ms
        return timings.get("vision", 0.0) + timings.get("prefill", 0.0)

    def supported_ranges(self) -> SupportedRanges:
        o = self.options
        return SupportedRanges(
            top_k=(1, o.num_experts), num_active_blocks=(1, o.num_blocks), disabled=tuple(o.disabled_configs)
        )

    def crops_for(self, knobs: Knobs, request: ModelRequest) -> int:
        """Crops the cost model assumes: the middle of the tier's range with an image, none without."""
        low, high = TIER_CROP_RANGE[knobs.tier]
        return (low + high) // 2 if request.image_b64 else 0

    def timings_ms(self, knobs: Knobs, request: ModelRequest) -> dict[str, float]:
        """The cost model, deterministic for given knobs and request (so tests can predict it)."""
        o = self.options
        low, high = TIER_CROP_RANGE[knobs.tier]
        tokens = vision_tokens((low + high) // 2) if request.image_b64 else 0
        # Expert compute grows with top_k relative to the default top-8 routing.
        expert_factor = 0.5 + 0.5 * knobs.top_k / 8
        blocks = knobs.num_active_blocks * expert_factor
        vision = tokens * o.vision_ms_per_token
        prefill = (tokens + o.prompt_tokens) * blocks * o.prefill_ms_per_token_block
        decode = request.max_new_tokens * blocks * o.decode_ms_per_token_block / o.num_blocks
        parts = {"vision": vision, "prefill": prefill, "decode": decode}
        scaled = {k: v * o.latency_scale * self.slowdown for k, v in parts.items()}
        scaled["total"] = sum(scaled.values())
        return scaled

    def calibrated_timings_ms(
        self, knobs: Knobs, request: ModelRequest, expected_ms: float, decode_ms_per_token: float | None = None
    ) -> dict[str, float]:
        """The table's latency for the config times latency_scale (and slowdown), with seeded
        lognormal jitter. Without a decode rate the table latency is the whole call, split into
        vision / prefill / decode in the cost model's proportions; with one (a table that has decode
        statistics) it is the first token (vision + prefill), and decode adds max_new_tokens x rate."""
        o = self.options
        with self._rng_lock:
            noise = math.exp(self._rng.gauss(0.0, o.jitter_sigma)) if o.jitter_sigma > 0 else 1.0
        factor = o.latency_scale * self.slowdown * noise
        total = expected_ms * factor
        shape = self.timings_ms(knobs, request)
        if decode_ms_per_token is not None and o.decode == "per_token":
            first = shape["vision"] + shape["prefill"]
            out = {p: total * shape[p] / first if first > 0 else total / 2 for p in ("vision", "prefill")}
            out["decode"] = request.max_new_tokens * decode_ms_per_token * factor
            out["total"] = total + out["decode"]
            return out
        parts = ("vision", "prefill", "decode")
        weight = sum(shape[p] for p in parts)
        out = {p: total * shape[p] / weight if weight > 0 else 0.0 for p in parts}
        out["total"] = total
        return out

    def check_request(self, knobs: Knobs, request: ModelRequest) -> None:
        """Every request fits: the simulated model has no prompt shape to outgrow."""

    def prepare(self, configs: list[Knobs]) -> dict[str, Any]:
        return {}

    def preparing(self) -> bool:
        return False

    def stats(self) -> dict[str, Any]:
        return {}

    def _timings(self, knobs: Knobs, requests: list[ModelRequest]) -> list[dict[str, float]]:
        expected = [r.expected_ms for r in requests]
        rates = [r.decode_ms_per_token for r in requests]
        table_mode = self.options.latency_source == "table"
        if table_mode and self.options.ground_truth == "first_table":
            known = [(e, d) for e, d in zip(expected, rates, strict=True) if e is not None]
            if known:
                truth = self._truth.setdefault(knobs, known[0])
                expected = [truth[0] if e is not None else None for e in expected]
                rates = [truth[1] if e is not None else None for e in expected]
        return [
            self.calibrated_timings_ms(knobs, r, e, d) if table_mode and e is not None else self.timings_ms(knobs, r)
            for r, e, d in zip(requests, expected, rates, strict=True)
        ]

    def open_session(self, knobs: Knobs) -> SimulatedSession:
        self.validate_knobs(knobs)
        session = SimulatedSession(self, knobs)
        self._open.append(session)
        return session

    def hold(self, by: SimulatedSession, seconds: float) -> None:
        """`by` holds the device for `seconds` (a prefill, a decode step): every other open
        session's members wait that long between their steps."""
        if seconds <= 0:
            return
        time.sleep(seconds)
        for session in self._open:
            if session is not by:
                session.stall(seconds * 1000)

    def closed(self, session: SimulatedSession) -> None:
        if session in self._open:
            self._open.remove(session)

    def generate_batch(
        self, knobs: Knobs, requests: list[ModelRequest], sinks: Sequence[OnText | None] | None = None
    ) -> list[ModelOutput]:
        """One batch on a session of its own, start to end (one call at a time: one device). The
        request's table figures (`expected_ms`, `decode_ms_per_token`) are used in "table" mode only."""
        with self._device:
            return run_to_end(self.open_session(knobs), knobs, requests, sinks)


@dataclass
class _Member:
    request: ModelRequest
    sink: OnText | None
    timings: dict[str, float]
    words: list[str]
    step_s: float
    stalled_ms: float = 0.0  # device time between its decode steps that was others' (prefills, other batches)
    produced: int = 1

    def reported(self) -> dict[str, float]:
        """Its timings as modelled, with the decode stretched by the prefills it waited for, so that
        the first token a client derives (its time minus the decode) is the one it really got."""
        out = dict(self.timings)
        out["decode"] += self.stalled_ms
        out["total"] += self.stalled_ms
        return out


class SimulatedSession:
    """A decode batch on the simulated device: a join sleeps the newcomers' first tokens (their
    prefills, one after another at this step boundary), a step sleeps one decode step of the slowest member; streamed
    members get a word per step while their text lasts (and are asked on every step whether their
    reader is still there)."""

    def __init__(self, backend: SimulatedBackend, knobs: Knobs) -> None:
        self.backend, self.knobs = backend, knobs
        self._members: dict[int, _Member] = {}
        self._done: dict[int, ModelOutput] = {}
        self._ids = itertools.count()

    @property
    def active(self) -> bool:
        return bool(self._members)

    def join(self, knobs: Knobs, requests: list[ModelRequest], sinks: Sequence[OnText | None]) -> list[int] | None:
        if (knobs.top_k, knobs.num_active_blocks) != (self.knobs.top_k, self.knobs.num_active_blocks):
            return None
        self.backend.validate_knobs(knobs)
        timings = self.backend._timings(knobs, requests)
        ids = []
        for r, sink, t in zip(requests, sinks, timings, strict=True):
            # Its prefill at this step boundary, after the newcomers before it (one after another,
            # as the graph engine prefills them: moe.engine join), while every member waits. A
            # one-token answer has no decode steps: its whole time is its first token.
            first_s = (t["total"] - (t["decode"] if r.max_new_tokens > 1 else 0.0)) / 1000
            if first_s > 0:
                self.backend.hold(self, first_s)
                self.stall(first_s * 1000)
            i = next(self._ids)
            ids.append(i)
            m = _Member(r, sink, t, _fake_text(knobs, r).split(" "), t["decode"] / max(1, r.max_new_tokens - 1) / 1000)
            self._members[i] = m
            going = sink(m.words[0]) if sink is not None else True
            if not going or r.max_new_tokens <= 1:
                self._finish(i, "length" if going else "cancelled")
        return ids

    def step(self) -> None:
        if not self._members:
            return
        self.backend.hold(self, max(m.step_s for m in self._members.values()))
        for i, m in list(self._members.items()):
            m.produced += 1
            if m.sink is not None:
                n = m.produced
                text = " " + m.words[n - 1] if n <= len(m.words) else ""
                if not m.sink(text):
                    self._finish(i, "cancelled")
                    continue
            if m.produced >= m.request.max_new_tokens:
                self._finish(i, "length")

    def stall(self, ms: float) -> None:
        """Every member waits `ms` of device time that is not its own decode."""
        for m in self._members.values():
            m.stalled_ms += ms

    def _finish(self, i: int, reason: str) -> None:
        m = self._members.pop(i)
        self._done[i] = ModelOutput(
            text=" ".join(m.words[: min(len(m.words), m.produced)]), output_tokens=m.produced,
            timings_ms=m.reported(),
            prompt_tokens=len(m.request.prompt.split()), finish_reason=reason,
        )

    def finished(self) -> dict[int, ModelOutput]:
        done, self._done = self._done, {}
        return done

    @property
    def remaining_steps(self) -> int:
        return max((m.request.max_new_tokens - m.produced for m in self._members.values()), default=0)

    def remaining_ms(self) -> float:
        return max(((m.request.max_new_tokens - m.produced) * m.step_s * 1000 for m in self._members.values()),
                   default=0.0)

    def close(self) -> None:
        self._members.clear()
        self.backend.closed(self)


def _replica_rank() -> int | None:
    """This replica's rank in its deployment; None outside a Serve replica (tests, benchmarks)."""
    try:
        from ray import serve

        rank = serve.get_replica_context().rank
    except Exception:  # noqa: BLE001 - not in a replica, or Ray without ranks
        return None
    value = getattr(rank, "rank", rank)
    return value if isinstance(value, int) else None


def _fake_text(knobs: Knobs, request: ModelRequest) -> str:
    digest = hashlib.sha256(f"{knobs.key}|{request.prompt}".encode()).hexdigest()[:12]
    return f"[simulated {knobs.key}] {digest}"
