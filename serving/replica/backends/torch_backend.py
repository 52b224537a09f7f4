"""The real PyTorch MoE backend: a transformers MoE LM whose work follows the knobs.

Importable without ray; torch and transformers load when a TorchBackend is constructed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from controller.knobs import TIER_CROP_RANGE, Knobs
from serving.replica.backends.base import ModelOutput, ModelRequest, OnText, run_to_end
from serving.replica.backends.text_stream import TextStream
from serving.wire import SupportedRanges


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
    # The generation engine (moe.engine): "graph" replays CUDA graphs captured per knob pair and
    # shape (on CUDA; on a CPU it runs the same steps eagerly), "eager" never captures (baseline).
    engine: Literal["graph", "eager"] = "graph"
    max_prompt_tokens: int = Field(default=2560, ge=16, le=131072)
    prefill_step: int = Field(default=256, ge=1)
    max_new_tokens: int = Field(default=512, ge=1, le=32768)
    decode_buckets: list[int] = Field(default_factory=lambda: [1, 2, 4, 8], min_length=1)
    # Decode batches of different knob pairs at once (moe.engine decode slots), stepped in turn: 2
    # lets a pair start beside a long stream of another pair. Each slot adds max_batch_size rows of
    # KV cache and its own decode graphs.
    decode_slots: int = Field(default=1, ge=1, le=4)

    @model_validator(mode="after")
    def _one_source(self) -> TorchOptions:
        if (self.preset is None) == (self.checkpoint is None):
            raise ValueError(
                "give exactly one of preset (e.g. 'olmoe-1b-7b', 'tiny') or checkpoint (a local path)"
            )
        if self.prefill_step > self.max_prompt_tokens:
            raise ValueError(f"prefill_step={self.prefill_step} exceeds max_prompt_tokens={self.max_prompt_tokens}")
        if sorted(set(self.decode_buckets)) != self.decode_buckets or self.decode_buckets[0] < 1:
            raise ValueError(
                f"decode_buckets={self.decode_buckets}: expected increasing integers >= 1, e.g. [1, 2, 4, 8]"
            )
        return self

    def engine_options(self) -> Any:
        from moe.engine import EngineOptions

        return EngineOptions(
            mode=self.engine,
            max_prompt_tokens=self.max_prompt_tokens,
            prefill_step=self.prefill_step,
            max_new_tokens=self.max_new_tokens,
            decode_buckets=tuple(self.decode_buckets),
            decode_slots=self.decode_slots,
        )


class TorchBackend:
    name = "torch"
    needs_preparation = True

    def __init__(self, **options: Any) -> None:
        from moe.engine import GenerationEngine
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
        self.engine = GenerationEngine(self.runner, o.engine_options())
        # Decode batches at once (the engine's slots); newcomers of a running pair join its batch.
        self.max_sessions = o.decode_slots

    @property
    def max_batch_rows(self) -> int:
        return min(self.options.max_batch_size, self.engine.max_batch)

    def open_session(self, knobs: Knobs) -> TorchSession:
        self.validate_knobs(knobs)
        return TorchSession(self, knobs)

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> TorchBackend:
        return cls(**options)

    def prepare(self, configs: list[Knobs]) -> dict[str, Any]:
        """Capture (or, eagerly, dry-run) every config's shapes, then one warm pass per crop count
        of its tiers, so that first-use costs (allocator growth, host caches, GC) stay off requests.
        Idempotent: configs already prepared cost nothing. Returns the engine report."""
        new = [k for k in configs if not self.engine.is_ready(k)]
        report = self.engine.prepare(configs)
        if new and self.options.warmup:
            from moe.warmup import freeze_heap, warm_shapes

            ready = [k for k in new if self.engine.is_ready(k)]
            for tier in sorted({k.tier for k in ready}):
                k = next(x for x in ready if x.tier == tier)
                warm_shapes(self.runner, [tier], top_k=k.top_k, blocks=k.num_active_blocks,
                            generate=self.engine.generate)
            freeze_heap()
        return report.to_dict()

    def preparing(self) -> bool:
        return bool(self.engine.capture_waiting)

    def stats(self) -> dict[str, Any]:
        return {"engine": self.engine.report.to_dict()}

    def validate_knobs(self, knobs: Knobs) -> None:
        self.engine.check(knobs)

    def check_request(self, knobs: Knobs, request: ModelRequest) -> None:
        """Raise moe.errors.InputTooLongError (HTTP 413) before the request joins a batch."""
        from moe.runner import PromptInput

        self.engine.check_input(PromptInput(request.prompt, self.crops_for(knobs, request)), request.max_new_tokens)

    def supported_ranges(self) -> SupportedRanges:
        from controller.knobs import TIERS, vision_tokens

        ranges = self.runner.knob_ranges()
        # A tier whose largest image alone does not fit the engine's prompt shape would 413 its
        # requests: it is not offered, so a table that holds it is refused before any request.
        fits = tuple(t for t in TIERS if vision_tokens(TIER_CROP_RANGE[t][1]) < self.options.max_prompt_tokens)
        # The engine disables (top_k, blocks) pairs; the table speaks of configs, one per tier.
        disabled = tuple(Knobs(t, k, b).key for (k, b) in self.engine.disabled_pairs() for t in TIERS)
        return SupportedRanges(
            top_k=ranges["top_k"], num_active_blocks=ranges["num_active_blocks"], tiers=fits, disabled=disabled
        )

    def crops_for(self, knobs: Knobs, request: ModelRequest) -> int | None:
        """Stand-in preprocessing: crops drawn in the tier's range from a hash of the image."""
        if request.image_b64 is None and not self.options.assume_image:
            return None
        lo, hi = TIER_CROP_RANGE[knobs.tier]
        seed = (request.image_b64 or request.prompt).encode()
        return lo + int.from_bytes(hashlib.sha256(seed).digest()[:4], "big") % (hi - lo + 1)

    def first_token_ms(self, timings: dict[str, float], service_ms: float) -> float:
        """The table's latency is the first token: vision + prefill of the call."""
        if "vision" in timings and "prefill" in timings:
            return float(timings["vision"] + timings["prefill"])
        return service_ms

    def generate_batch(
        self, knobs: Knobs, requests: list[ModelRequest], sinks: Sequence[OnText | None] | None = None
    ) -> list[ModelOutput]:
        """One batch on a session of its own, start to end, in chunks of the engine's rows."""
        out: list[ModelOutput] = []
        all_sinks = list(sinks) if sinks is not None else [None] * len(requests)
        for start in range(0, len(requests), self.max_batch_rows):
            end = start + self.max_batch_rows
            out += run_to_end(self.open_session(knobs), knobs, requests[start:end], all_sinks[start:end])
        return out

    def _output(self, request: ModelRequest, res: Any) -> ModelOutput:
        ids = res.token_ids[: request.max_new_tokens]
        text = res.text if len(ids) == len(res.token_ids) else self.runner.codec.decode(ids)
        return ModelOutput(
            text=text,
            output_tokens=len(ids),
            timings_ms=dict(res.timings_ms),
            prompt_tokens=res.vision_tokens + res.text_tokens,
            finish_reason="stop" if res.ends_with_eos and len(ids) == len(res.token_ids) else "length",
        )


def _seed(request: ModelRequest) -> int:
    return int.from_bytes(hashlib.sha256((request.image_b64 or request.prompt).encode()).digest()[:4], "big")


class TorchSession:
    """A decode batch on the engine (moe.engine.DecodeBatch): requests of its knob pair join
    between two steps; each streamed member's new tokens go through its own TextStream to its sink
    (a step that adds no text still asks the sink whether the reader is there)."""

    def __init__(self, backend: TorchBackend, knobs: Knobs) -> None:
        from moe.engine import DecodeBatch

        self.backend, self.knobs = backend, knobs
        self.batch = DecodeBatch(backend.engine, knobs)
        self._requests: dict[int, ModelRequest] = {}

    @property
    def active(self) -> bool:
        return self.batch.active

    def join(self, knobs: Knobs, requests: list[ModelRequest], sinks: Sequence[OnText | None]) -> list[int] | None:
        from moe.runner import PromptInput

        b = self.backend
        b.validate_knobs(knobs)
        limits = [r.max_new_tokens for r in requests]
        if not self.batch.can_join(knobs, len(requests), limits):
            return None
        codec, eos = b.runner.codec, b.engine.eos_token_id
        calls = [None if s is None else _reader(TextStream(codec.decode, eos), s) for s in sinks]
        inputs = [PromptInput(r.prompt, b.crops_for(knobs, r), image_seed=_seed(r)) for r in requests]
        rows = self.batch.join(knobs, inputs, limits, calls)
        if rows is None:
            return None
        for row, r in zip(rows, requests, strict=True):
            self._requests[row] = r
        return rows

    def step(self) -> None:
        self.batch.step()

    def finished(self) -> dict[int, ModelOutput]:
        out = {}
        for row, res in self.batch.finished().items():
            o = self.backend._output(self._requests.pop(row), res)
            out[row] = replace(o, finish_reason="cancelled") if res.stopped else o
        return out

    def remaining_ms(self) -> float:
        return self.batch.remaining_ms()

    @property
    def remaining_steps(self) -> int:
        return self.batch.remaining_steps

    def close(self) -> None:
        self.batch.close()


def _reader(stream: TextStream, sink: OnText) -> Callable[[list[int]], bool]:
    def on_tokens(new: list[int]) -> bool:
        return bool(sink(stream.push(new)))

    return on_tokens
