"""Warm-up before anything is timed or served: every input shape a tier can produce, then freeze GC.

At batch 1 this model is host-bound, and two host costs otherwise land on real requests: the first
pass at each new sequence length (kernel selection, allocator growth) and cyclic garbage collection
walking the model's and the framework's millions of long-lived objects (a gen-2 pass takes tens of
milliseconds). `gc.freeze()` moves everything alive now out of the collector's reach.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterable
from typing import Any

from controller.knobs import TIER_CROP_RANGE, Knobs
from moe.runner import MoERunner, PromptInput


def warm_shapes(runner: MoERunner, tiers: Iterable[str], prompts: Iterable[str] = ("warm up",),
                top_k: int | None = None, blocks: int | None = None,
                generate: Callable[..., Any] | None = None) -> int:
    """One untimed pass per (tier, crop count, prompt), at all blocks unless `blocks` is given,
    through `generate` (default: the runner's; the engine passes its own); returns the passes run."""
    full_blocks = blocks or runner.blocks_range()[1]
    k = top_k or int(getattr(runner.model.config, "num_experts_per_tok", 1))
    gen = generate or runner.generate
    passes = 0
    for tier in tiers:
        lo, hi = TIER_CROP_RANGE[tier]
        knobs = Knobs(tier, k, full_blocks)
        for crops in range(lo, hi + 1):
            for prompt in prompts:
                gen(knobs, [PromptInput(prompt, crops)], max_new_tokens=2)
                passes += 1
    return passes


def freeze_heap() -> None:
    gc.collect()
    gc.freeze()
