"""A CPU stand-in for the MoE model: latency from a cost model of tier, top_k and blocks, or
calibrated to the lookup table's expected latency of each config."""

from __future__ import annotations

import hashlib
import math
import random
import threading
import time
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from controller.errors import KnobError
from controller.knobs import TIER_CROP_RANGE, Knobs, vision_tokens
from moe.errors import ConfigDisabledError
from serving.replica.backends.base import ModelOutput, ModelRequest, OnText, SupportedRanges


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
    # "in_table_latency": in table mode the table latency is the whole call (split into vision,
    # prefill and decode). "per_token": it is the first token (vision + prefill, the table's default
    # metric) and decode adds max_new_tokens x the table's decode ms/token, where the table has it.
    decode: Literal["in_table_latency", "per_token"] = "in_table_latency"
    # "request": each request's table latency is the model's speed. "first_table": the first table
    # latency seen per config is, from then on, the model's true speed, so that a recalibrated table
    # (which already holds the slowdown) does not feed back into the simulated model.
    ground_truth: Literal["request", "first_table"] = "request"
    seed: int = 0
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

    def __init__(self, **options: object) -> None:
        self.options = SimulatedOptions.model_validate(options)
        self._rng = random.Random(self.options.seed)
        self._rng_lock = threading.Lock()
        # One device: one call at a time, as a GPU serialises its kernels (and the engine its calls).
        self._device = threading.Lock()
        self._truth: dict[Knobs, tuple[float, float | None]] = {}  # ground_truth "first_table"

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
        scaled = {k: v * o.latency_scale * o.slowdown for k, v in parts.items()}
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
        factor = o.latency_scale * o.slowdown * noise
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

    def generate_batch(
        self, knobs: Knobs, requests: list[ModelRequest], sinks: Sequence[OnText | None] | None = None
    ) -> list[ModelOutput]:
        """One device, as a GPU: calls run one at a time (streams and batches alike). A batch takes
        its longest member's first token (vision + prefill), then decodes step by step to its
        longest member's token count; each streamed member gets a word per step, and stops early
        when its sink says its client left. The request's table figures (`expected_ms`,
        `decode_ms_per_token`) are used in "table" mode only."""
        self.validate_knobs(knobs)
        sinks = list(sinks) if sinks is not None else [None] * len(requests)
        timings = self._timings(knobs, requests)
        with self._device:
            if not any(s is not None for s in sinks):
                # No streamed member: one sleep (finer steps would only add timer error).
                longest_s = max((t["total"] for t in timings), default=0.0) / 1000
                if longest_s > 0:
                    time.sleep(longest_s)
                produced = [r.max_new_tokens for r in requests]
            else:
                produced = self._stepped(knobs, requests, sinks, timings)
        outs = []
        for r, t, n in zip(requests, timings, produced, strict=True):
            words = _fake_text(knobs, r).split(" ")
            reason = "length" if n >= r.max_new_tokens else "cancelled"
            outs.append(ModelOutput(text=" ".join(words[: min(len(words), max(1, n))]), output_tokens=n,
                                    timings_ms=t, prompt_tokens=len(r.prompt.split()), finish_reason=reason))
        return outs

    def _stepped(self, knobs: Knobs, requests: list[ModelRequest], sinks: list[OnText | None],
                 timings: list[dict[str, float]]) -> list[int]:
        """The batch in steps: the first token, then one decode step at a time. Returns the tokens
        each member got (fewer than asked for a stream whose client left)."""
        first_s = max(t["total"] - t["decode"] for t in timings) / 1000
        steps = max(r.max_new_tokens for r in requests)
        step_s = max(t["decode"] / max(1, r.max_new_tokens - 1) for r, t in zip(requests, timings, strict=True)) / 1000
        if first_s > 0:
            time.sleep(first_s)
        words = [_fake_text(knobs, r).split(" ") for r in requests]
        produced = [1] * len(requests)
        going = [True] * len(requests)
        for step in range(1, steps + 1):
            if step > 1:
                if step_s > 0:
                    time.sleep(step_s)
                for i, r in enumerate(requests):
                    if going[i] and produced[i] < r.max_new_tokens:
                        produced[i] += 1
            for i, sink in enumerate(sinks):
                if sink is None or not going[i]:
                    continue
                n = produced[i]
                if step == 1:
                    going[i] = sink(words[i][0])
                elif n <= len(words[i]) and n == step:  # a word a step while the text lasts
                    going[i] = sink(" " + words[i][n - 1])
                if not going[i]:
                    produced[i] = min(produced[i], step)
            live = [i for i, r in enumerate(requests) if going[i] and produced[i] < r.max_new_tokens]
            if not live:
                break
        return produced


def _fake_text(knobs: Knobs, request: ModelRequest) -> str:
    digest = hashlib.sha256(f"{knobs.key}|{request.prompt}".encode()).hexdigest()[:12]
    return f"[simulated {knobs.key}] {digest}"
