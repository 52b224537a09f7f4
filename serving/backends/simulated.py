"""A CPU stand-in for the MoE model: latency from a cost model of tier, top_k and blocks."""

from __future__ import annotations

import hashlib
import time

from pydantic import BaseModel, ConfigDict, Field

from controller.errors import KnobError
from controller.knobs import TIER_CROP_RANGE, Knobs, vision_tokens
from serving.backends.base import ModelOutput, ModelRequest


class SimulatedOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    num_blocks: int = Field(default=16, ge=1)
    num_experts: int = Field(default=64, ge=1)
    # Multiplies every simulated duration; 0 makes the model answer at once (overhead benchmarks).
    latency_scale: float = Field(default=1.0, ge=0)
    # Cost model, milliseconds at scale 1: roughly MolmoE-1B on an H100 for a short answer.
    vision_ms_per_token: float = Field(default=0.02, ge=0)
    prefill_ms_per_token_block: float = Field(default=0.0015, ge=0)
    decode_ms_per_token_block: float = Field(default=0.9, ge=0)
    prompt_tokens: int = Field(default=64, ge=0)


class SimulatedBackend:
    name = "simulated"

    def __init__(self, **options: object) -> None:
        self.options = SimulatedOptions.model_validate(options)

    def validate_knobs(self, knobs: Knobs) -> None:
        o = self.options
        if not 1 <= knobs.top_k <= o.num_experts:
            raise KnobError("top_k", knobs.top_k, f"an integer in [1, {o.num_experts}] (experts per layer)")
        if not 1 <= knobs.num_active_blocks <= o.num_blocks:
            raise KnobError("num_active_blocks", knobs.num_active_blocks, f"an integer in [1, {o.num_blocks}]")

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
        scaled = {k: v * o.latency_scale for k, v in parts.items()}
        scaled["total"] = sum(scaled.values())
        return scaled

    def generate_batch(self, knobs: Knobs, requests: list[ModelRequest]) -> list[ModelOutput]:
        self.validate_knobs(knobs)
        timings = [self.timings_ms(knobs, r) for r in requests]
        # A batch on a real GPU takes about as long as its slowest member.
        longest_s = max((t["total"] for t in timings), default=0.0) / 1000
        if longest_s > 0:
            time.sleep(longest_s)
        return [
            ModelOutput(text=_fake_text(knobs, r), output_tokens=r.max_new_tokens, timings_ms=t)
            for r, t in zip(requests, timings, strict=True)
        ]


def _fake_text(knobs: Knobs, request: ModelRequest) -> str:
    digest = hashlib.sha256(f"{knobs.key}|{request.prompt}".encode()).hexdigest()[:12]
    return f"[simulated {knobs.key}] {digest}"
