"""Generation with a KV cache under per-request knobs, timed per stage (vision, prefill, decode)."""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import DynamicCache

from controller.blocks import active_blocks, blocks_range, skipped_blocks
from controller.errors import KnobError
from controller.knobs import TIER_CROP_RANGE, Knobs, tier_index, vision_tokens
from moe.knob_patch import ForwardKnobs, knob_context
from moe.presets import LoadedModel
from moe.tokenizer import TextCodec, make_codec


@dataclass(frozen=True)
class PromptInput:
    """One request: its prompt, how many crops its image is cut into, and the seed of its pixels."""

    prompt: str
    num_crops: int | None  # None: no image, so no vision tokens
    image_seed: int = 0

    @property
    def num_images(self) -> int:
        return 0 if self.num_crops is None else self.num_crops + 1


@dataclass
class GenerationResult:
    token_ids: list[int]
    text: str
    ends_with_eos: bool
    num_crops: int | None
    vision_tokens: int
    text_tokens: int
    # ms: "vision", "prefill", "decode", "total" for the batch this request ran in.
    timings_ms: dict[str, float]
    decode_per_step_ms: list[float] = field(default_factory=list)
    # Float32 logits per generated token (first from the prefill), when the caller asked for them.
    logits: list[Any] | None = None
    # Stopped early because its reader went away (a streamed request whose client left).
    stopped: bool = False

    @property
    def total_sequence_length(self) -> int:
        return self.vision_tokens + self.text_tokens + len(self.token_ids)


def cut_at_eos(ids: list[int], eos: int | None) -> list[int]:
    """Tokens up to and including the first end-of-sequence token."""
    return ids[: ids.index(eos) + 1] if eos is not None and eos in ids else ids


def finished(token: torch.Tensor, eos: int | None) -> torch.Tensor:
    """Per row: did this step produce the end-of-sequence token?"""
    return torch.zeros_like(token, dtype=torch.bool) if eos is None else token == eos


def build_results(
    inputs: Sequence[PromptInput],
    generated: list[list[int]],
    text_ids: list[list[int]],
    codec: TextCodec,
    eos: int | None,
    timings: dict[str, float],
    steps_ms: list[float],
) -> list[GenerationResult]:
    """One GenerationResult per request of a batch (the runner's and the engine's alike)."""
    results = []
    for i, x in enumerate(inputs):
        ids = cut_at_eos(generated[i], eos)
        results.append(
            GenerationResult(
                token_ids=ids,
                text=codec.decode(ids),
                ends_with_eos=eos is not None and ids[-1:] == [eos],
                num_crops=x.num_crops,
                vision_tokens=0 if x.num_crops is None else vision_tokens(x.num_crops),
                text_tokens=len(text_ids[i]),
                timings_ms=dict(timings),
                decode_per_step_ms=list(steps_ms),
            )
        )
    return results


def choose_crops(tier: str, seed: int) -> int:
    """Crops for one image of `tier`: uniform over the tier's range, reproducible from `seed`.
    (Real preprocessing picks crops from the image's size; there are no real images here.)"""
    lo, hi = TIER_CROP_RANGE[tier]
    return random.Random(f"{tier}:{seed}").randint(lo, hi)


class MoERunner:
    """Runs batches of equal-knob requests on a LoadedModel. Thread-safe: knobs travel in a
    ContextVar (see moe.knob_patch) and every call builds its own KV cache."""

    def __init__(
        self,
        model: LoadedModel,
        *,
        block_order: str | Sequence[int] = "molmoe",
        codec: TextCodec | None = None,
        checkpoint: str | None = None,
    ) -> None:
        self.model = model
        self.block_order = block_order if isinstance(block_order, str) else tuple(block_order)
        blocks_range(model.num_blocks, self.block_order)  # validates a custom order now
        cfg = model.config
        eos = getattr(cfg, "eos_token_id", None)
        eos = eos[0] if isinstance(eos, list) else eos
        self.codec = codec or make_codec(checkpoint, int(cfg.vocab_size), eos)
        self.eos_token_id: int | None = self.codec.eos_token_id
        self.pad_token_id = int(getattr(cfg, "pad_token_id", None) or 0)
        self._cuda = model.device.type == "cuda"

    # ---- knobs -------------------------------------------------------------------------------
    def knob_ranges(self) -> dict[str, tuple[int, int]]:
        return {"top_k": (1, self.model.num_experts), "num_active_blocks": self.blocks_range()}

    def blocks_range(self) -> tuple[int, int]:
        return blocks_range(self.model.num_blocks, self.block_order)

    def validate(self, knobs: Knobs) -> None:
        tier_index(knobs.tier)
        lo, hi = 1, self.model.num_experts
        if not lo <= knobs.top_k <= hi:
            raise KnobError("top_k", knobs.top_k, f"an integer in {lo}..{hi} (experts of this model)")
        skipped_blocks(knobs.num_active_blocks, self.model.num_blocks, self.block_order)

    def forward_knobs(self, knobs: Knobs) -> ForwardKnobs:
        self.validate(knobs)
        skip = skipped_blocks(knobs.num_active_blocks, self.model.num_blocks, self.block_order)
        return ForwardKnobs(top_k=knobs.top_k, skip_blocks=skip)

    def active_blocks(self, num_active: int) -> list[int]:
        return active_blocks(num_active, self.model.num_blocks, self.block_order)

    # ---- generation --------------------------------------------------------------------------
    def _now(self) -> float:
        if self._cuda:
            torch.cuda.synchronize(self.model.device)
        return time.perf_counter()

    def _cache(self) -> DynamicCache:
        try:
            return DynamicCache(config=self.model.config)
        except TypeError:  # older transformers
            return DynamicCache()

    def generate(
        self,
        knobs: Knobs,
        inputs: Sequence[PromptInput],
        *,
        max_new_tokens: int = 16,
        prefill_only: bool = False,
    ) -> list[GenerationResult]:
        """Greedy generation for a batch that shares `knobs`; `prefill_only` stops after the first
        token (the prefill's own output), so decode is 0 ms."""
        if not inputs:
            return []
        if max_new_tokens < 1:
            raise KnobError("max_new_tokens", max_new_tokens, "an integer >= 1")
        fk = self.forward_knobs(knobs)
        m, dev, dtype = self.model, self.model.device, self.model.dtype
        text_ids = [self.codec.encode(x.prompt) for x in inputs]
        # Pixels are data, made before the clock starts, as a loaded image would be.
        images = [m.vision.pixels(x.num_images, device=dev, dtype=dtype, seed=x.image_seed) for x in inputs]
        pixels = torch.cat(images)
        with torch.inference_mode(), knob_context(fk):
            t0 = self._now()
            vis = m.vision(pixels) if len(pixels) else pixels  # (sum(crops + 1), 144, hidden)
            t1 = self._now()
            embeds, mask, positions = self._assemble(vis, inputs, text_ids)
            cache = self._cache()
            out = m.lm(
                inputs_embeds=embeds,
                attention_mask=mask,
                position_ids=positions,
                use_cache=True,
                logits_to_keep=1,
                **{_CACHE_KW: cache},
            )
            token = out.logits[:, -1].argmax(-1)
            t2 = self._now()
            generated, steps_ms = self._decode(
                token, cache, mask, positions, 1 if prefill_only else max_new_tokens
            )
            t3 = self._now()
        timings = {
            "vision": (t1 - t0) * 1e3,
            "prefill": (t2 - t1) * 1e3,
            "decode": (t3 - t2) * 1e3,
            "total": (t3 - t0) * 1e3,
        }
        return build_results(inputs, generated, text_ids, self.codec, self.eos_token_id, timings, steps_ms)

    def _assemble(
        self, vis: torch.Tensor, inputs: Sequence[PromptInput], text_ids: list[list[int]]
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """Image tokens then text per request, left-padded to one length (padding is masked)."""
        emb = self.model.lm.get_input_embeddings()
        dev = self.model.device
        seqs, start = [], 0
        for x, ids in zip(inputs, text_ids, strict=True):
            text = emb(torch.tensor(ids, device=dev))
            n = x.num_images
            if n:
                image = vis[start : start + n].reshape(-1, vis.shape[-1])
                start += n
                text = torch.cat([image.to(text.dtype), text])
            seqs.append(text)
        length = max(s.shape[0] for s in seqs)
        if all(s.shape[0] == length for s in seqs):
            # No padding: no mask, so SDPA takes its causal fast path.
            pos = torch.arange(length, device=dev).unsqueeze(0).expand(len(seqs), -1)
            return torch.stack(seqs), None, pos
        hidden = seqs[0].shape[-1]
        embeds = torch.zeros(len(seqs), length, hidden, device=dev, dtype=seqs[0].dtype)
        mask = torch.zeros(len(seqs), length, device=dev, dtype=torch.long)
        for i, s in enumerate(seqs):
            embeds[i, length - s.shape[0] :] = s
            mask[i, length - s.shape[0] :] = 1
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        return embeds, mask, pos

    def _decode(
        self,
        token: torch.Tensor,
        cache: Any,
        mask: torch.Tensor | None,
        positions: torch.Tensor,
        max_new_tokens: int,
    ) -> tuple[list[list[int]], list[float]]:
        tokens = [token]
        steps: list[float] = []
        pos = positions[:, -1:]
        done = self._finished(token)
        for _ in range(max_new_tokens - 1):
            if bool(done.all()):
                break
            t = self._now()
            pos = pos + 1
            if mask is not None:
                mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            out = self.model.lm(
                input_ids=token[:, None],
                attention_mask=mask,
                position_ids=pos,
                use_cache=True,
                **{_CACHE_KW: cache},
            )
            token = out.logits[:, -1].argmax(-1)
            tokens.append(token)
            done = done | self._finished(token)
            steps.append((self._now() - t) * 1e3)
        ids = torch.stack(tokens, dim=1).tolist()
        return ids, steps

    def _finished(self, token: torch.Tensor) -> torch.Tensor:
        return finished(token, self.eos_token_id)


def _cache_kwarg() -> str:
    import inspect

    from transformers import OlmoeForCausalLM

    params = inspect.signature(OlmoeForCausalLM.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


_CACHE_KW = _cache_kwarg()
