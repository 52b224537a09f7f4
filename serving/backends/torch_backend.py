"""The real PyTorch MoE backend: a transformers MoE LM whose work follows the knobs.

Importable without ray; torch and transformers load when a TorchBackend is constructed.
"""

from __future__ import annotations

import hashlib
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from controller.knobs import TIER_CROP_RANGE, Knobs
from serving.backends.base import ModelOutput, ModelRequest, SupportedRanges


class TorchOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Exactly one of preset (random weights) and checkpoint (a local folder; never downloaded).
    preset: str | None = None
    checkpoint: str | None = None
    vision_checkpoint: str | None = None
    device: str = "cpu"
    dtype: str = "auto"  # bf16 on CUDA, fp32 on CPU
    experts_implementation: Literal["auto", "grouped_mm", "batched_mm", "eager"] = "auto"
    # "molmoe" (the profiling's drop order), "first_n", or block indices in the order they are dropped.
    block_order: Literal["molmoe", "first_n"] | list[int] = "molmoe"
    max_batch_size: int = Field(default=8, ge=1)
    # A request without image_b64 still gets a stand-in image, so the tier sets its vision tokens.
    assume_image: bool = True
    seed: int = 0
    warmup: bool = True

    @model_validator(mode="after")
    def _one_source(self) -> TorchOptions:
        if (self.preset is None) == (self.checkpoint is None):
            raise ValueError(
                "give exactly one of preset (e.g. 'olmoe-1b-7b', 'tiny') or checkpoint (a local path)"
            )
        return self


class TorchBackend:
    name = "torch"

    def __init__(self, **options: Any) -> None:
        from moe.presets import build_model
        from moe.runner import MoERunner

        self.options = o = TorchOptions.model_validate(options)
        model = build_model(
            o.preset,
            checkpoint=o.checkpoint,
            vision_checkpoint=o.vision_checkpoint,
            device=o.device,
            dtype=o.dtype,
            experts_implementation=o.experts_implementation,
            seed=o.seed,
        )
        self.runner = MoERunner(model, block_order=o.block_order, checkpoint=o.checkpoint)
        if o.warmup:  # first-call costs (kernel selection, allocator, GC) stay out of request latency
            from moe.warmup import freeze_heap, warm_shapes

            warm_shapes(self.runner, TIER_CROP_RANGE)
            freeze_heap()

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> TorchBackend:
        return cls(**options)

    def validate_knobs(self, knobs: Knobs) -> None:
        self.runner.validate(knobs)

    def supported_ranges(self) -> SupportedRanges:
        ranges = self.runner.knob_ranges()
        return SupportedRanges(top_k=ranges["top_k"], num_active_blocks=ranges["num_active_blocks"])

    def crops_for(self, knobs: Knobs, request: ModelRequest) -> int | None:
        """Stand-in preprocessing: crops drawn in the tier's range from a hash of the image."""
        if request.image_b64 is None and not self.options.assume_image:
            return None
        lo, hi = TIER_CROP_RANGE[knobs.tier]
        seed = (request.image_b64 or request.prompt).encode()
        return lo + int.from_bytes(hashlib.sha256(seed).digest()[:4], "big") % (hi - lo + 1)

    def generate_batch(self, knobs: Knobs, requests: list[ModelRequest]) -> list[ModelOutput]:
        from moe.runner import PromptInput

        self.validate_knobs(knobs)
        out: list[ModelOutput] = []
        size = self.options.max_batch_size
        for start in range(0, len(requests), size):
            chunk = requests[start : start + size]
            # Requests with different max_new_tokens share the batch: decode runs to the longest,
            # and each output is cut to its own length.
            longest = max(r.max_new_tokens for r in chunk)
            inputs = [PromptInput(r.prompt, self.crops_for(knobs, r), image_seed=_seed(r)) for r in chunk]
            results = self.runner.generate(knobs, inputs, max_new_tokens=longest)
            for r, res in zip(chunk, results, strict=True):
                ids = res.token_ids[: r.max_new_tokens]
                text = res.text if len(ids) == len(res.token_ids) else self.runner.codec.decode(ids)
                out.append(ModelOutput(text=text, output_tokens=len(ids), timings_ms=dict(res.timings_ms)))
        return out


def _seed(request: ModelRequest) -> int:
    return int.from_bytes(hashlib.sha256((request.image_b64 or request.prompt).encode()).digest()[:4], "big")
