"""Warm-up covers every crop count of each tier and takes the live heap out of GC's reach."""

from __future__ import annotations

import gc

from moe.runner import MoERunner
from moe.warmup import freeze_heap, warm_shapes


def test_warm_shapes_visits_every_crop_count(runner: MoERunner) -> None:
    # low: crops 1-3, high: 9-15 -> 3 + 7 shapes, times two prompts.
    assert warm_shapes(runner, ["low", "high"], prompts=["a", "a longer prompt"]) == 20


def test_freeze_heap() -> None:
    try:
        freeze_heap()
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
