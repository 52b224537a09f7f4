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
from serving.replica.backends.base import ModelOutput, ModelRequest, OnText
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
        )


class TorchBackend:
    name = "torch"
    needs_preparation = True
    max_sessions = 1  # one KV buffer

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
        """Streamed members ride in the same engine call as the others: after the prefill and after
        every decode step each gets its new text (incrementally detokenized). A member whose sink
        says its client left gets nothing more; the call stops early once no member still needs
        tokens (the others run to their own max_new_tokens, not further)."""
        from moe.runner import PromptInput

        self.validate_knobs(knobs)
        sinks = list(sinks) if sinks is not None else [None] * len(requests)
        out: list[ModelOutput] = []
        # The engine's own chunk size bounds ours, so that its on_tokens rows are this chunk's.
        size = min(self.options.max_batch_size, self.engine.max_batch)
        for start in range(0, len(requests), size):
            chunk = requests[start : start + size]
            chunk_sinks = sinks[start : start + size]
            # Requests with different max_new_tokens share the batch: decode runs to the longest
            # still needed, and each output is cut to its own length.
            longest = max(r.max_new_tokens for r in chunk)
            inputs = [PromptInput(r.prompt, self.crops_for(knobs, r), image_seed=_seed(r)) for r in chunk]
            rows = _Rows(chunk, chunk_sinks, self.runner.codec.decode, self.engine.eos_token_id)
            on_tokens = rows.on_tokens if any(s is not None for s in chunk_sinks) else None
            results = self.engine.generate(knobs, inputs, max_new_tokens=longest, on_tokens=on_tokens)
            for i, (r, res) in enumerate(zip(chunk, results, strict=True)):
                o = self._output(r, res)
                out.append(replace(o, finish_reason="cancelled") if rows.cancelled[i] else o)
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


class _Rows:
    """The streamed members of one engine call: each row's new tokens go through its own
    TextStream to its sink; the engine goes on while any row still needs tokens."""

    def __init__(self, requests: list[ModelRequest], sinks: list[OnText | None],
                 decode: Callable[[list[int]], str], eos: int | None) -> None:
        self.requests, self.sinks = requests, sinks
        self.streams = [TextStream(decode, eos) if s is not None else None for s in sinks]
        self.cancelled = [False] * len(requests)
        self.seen = [0] * len(requests)

    def on_tokens(self, rows: list[list[int]]) -> bool:
        needed = False
        for i, ids in enumerate(rows):
            limit = self.requests[i].max_new_tokens
            stream, sink = self.streams[i], self.sinks[i]
            if stream is not None and sink is not None and not self.cancelled[i]:
                new = ids[self.seen[i] : min(len(ids), limit)]
                self.seen[i] = min(len(ids), limit)
                delta = stream.push(new) if new else ""
                if delta and not sink(delta):
                    self.cancelled[i] = True
                if stream.ended:
                    continue
            if not self.cancelled[i] and len(ids) < limit and not _ended(ids, self.streams[i]):
                needed = True
        return needed


def _ended(ids: list[int], stream: TextStream | None) -> bool:
    return stream is not None and stream.ended


class TorchSession:
    """A decode batch on the engine. The engine runs a call start to end (its KV buffer holds one
    batch), so a session takes one group, runs it whole at its join, and takes nobody else."""

    def __init__(self, backend: TorchBackend, knobs: Knobs) -> None:
        self.backend, self.knobs = backend, knobs
        self._done: dict[int, ModelOutput] = {}
        self._used = False

    @property
    def active(self) -> bool:
        return False

    def join(self, knobs: Knobs, requests: list[ModelRequest], sinks: Sequence[OnText | None]) -> list[int] | None:
        if self._used or knobs != self.knobs:
            return None
        self._used = True
        outs = self.backend.generate_batch(knobs, requests, sinks)
        self._done = dict(enumerate(outs))
        return list(range(len(outs)))

    def step(self) -> None:
        pass

    def finished(self) -> dict[int, ModelOutput]:
        done, self._done = self._done, {}
        return done

    def remaining_ms(self) -> float:
        return 0.0

    def close(self) -> None:
        pass
