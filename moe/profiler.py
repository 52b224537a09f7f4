"""Sweep a knob grid on a MoERunner and write one core_exp file per config (resumable)."""

from __future__ import annotations

import itertools
import platform
import random
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from controller.core_exp.write import sample_record, write_config_file
from controller.datasets import dataset_folder
from controller.knobs import TIER_CROP_RANGE, TIERS, Knobs
from moe.prompts import AccuracyHook, ProfileSample, score
from moe.runner import GenerationResult, MoERunner, PromptInput, choose_crops

NO_ACCURACY = "none (random weights): accuracy is 0.0 placeholder, take it from another table"
IMAGE_SIZE_PER_CROP = 336


@dataclass(frozen=True)
class Grid:
    tiers: tuple[str, ...]
    top_ks: tuple[int, ...]
    blocks: tuple[int, ...]

    def configs(self) -> list[Knobs]:
        return [Knobs(t, k, b) for t, k, b in itertools.product(self.tiers, self.top_ks, self.blocks)]


@dataclass
class ProfileReport:
    written: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)


def existing_config_file(out_dir: str | Path, dataset: str, knobs: Knobs) -> Path | None:
    """The merged file of this config if a previous run wrote it (the crops part of the name varies)."""
    folder = Path(out_dir) / dataset_folder(dataset)
    task = dataset_folder(dataset)
    pattern = f"{task}_imgsizetier-{knobs.tier}_crops*_topk{knobs.top_k}_blocks{knobs.num_active_blocks}.json"
    found = sorted(folder.glob(pattern))
    return found[0] if found else None


def crops_for(sample: ProfileSample, tier: str) -> int:
    lo, hi = TIER_CROP_RANGE[tier]
    if sample.num_crops is not None:
        return min(max(sample.num_crops, lo), hi)  # the tier caps (and floors) the crop count
    return choose_crops(tier, sample.sample_id)


def _record(knobs: Knobs, sample: ProfileSample, res: GenerationResult, accuracy: float) -> dict[str, Any]:
    t = res.timings_ms
    content = len(res.token_ids) - (1 if res.ends_with_eos else 0)
    crops = res.num_crops
    assert crops is not None, "profiling inputs always carry an image (crops_for gives every one a crop count)"
    return sample_record(
        sample_id=sample.sample_id,
        tier=knobs.tier,
        top_k=knobs.top_k,
        num_active_blocks=knobs.num_active_blocks,
        accuracy=accuracy,
        T_vision_total=t["vision"],
        T_LLM_prefill=t["prefill"],
        T_LLM_decode=t["decode"],
        T_total=t["total"],
        T_decode_per_step=[[ms] for ms in res.decode_per_step_ms],  # [position][run], one run
        output_tokens=len(res.token_ids),
        content_tokens=content,
        ends_with_eos=res.ends_with_eos,
        actual_num_crops=crops,
        actual_tiling=[1, crops],
        actual_image_size=[IMAGE_SIZE_PER_CROP, IMAGE_SIZE_PER_CROP * crops],
        actual_vision_tokens=res.vision_tokens,
        actual_text_tokens=res.text_tokens,
        pred=res.text,
        question_id=sample.question_id,
        answers=list(sample.answers),
        image_id=sample.image_id,
    )


def profile_config(
    runner: MoERunner,
    knobs: Knobs,
    samples: Sequence[ProfileSample],
    *,
    max_new_tokens: int = 8,
    warmup: int = 2,
    prefill_only: bool = False,
    hook: AccuracyHook | None = None,
) -> list[dict[str, Any]]:
    """Per-sample core_exp records at batch size 1; the `warmup` passes are run and thrown away."""
    inputs = [PromptInput(s.prompt, crops_for(s, knobs.tier), image_seed=s.sample_id) for s in samples]
    for i in range(warmup):
        runner.generate(
            knobs, [inputs[i % len(inputs)]], max_new_tokens=max_new_tokens, prefill_only=prefill_only
        )
    records = []
    for sample, inp in zip(samples, inputs, strict=True):
        (res,) = runner.generate(knobs, [inp], max_new_tokens=max_new_tokens, prefill_only=prefill_only)
        accuracy = 0.0 if hook is None else score(hook, res.text, sample)
        records.append(_record(knobs, sample, res, accuracy))
    return records


def profile_interleaved(
    runner: MoERunner,
    configs: Sequence[Knobs],
    samples: Sequence[ProfileSample],
    *,
    max_new_tokens: int = 8,
    warmup: int = 2,
    prefill_only: bool = False,
    hook: AccuracyHook | None = None,
    seed: int = 0,
    on_round: Any = None,
) -> dict[Knobs, list[dict[str, Any]]]:
    """Per-sample records for every config, measured in rounds: round i runs sample i under every
    config in a fresh random order. On a host-bound stack, drift (clocks, contention, first use of a
    code path) then spreads over all configs alike instead of landing on whichever config was being
    timed, which is what makes per-config differences trustworthy."""
    inputs = {k: [PromptInput(s.prompt, crops_for(s, k.tier), image_seed=s.sample_id) for s in samples]
              for k in configs}
    for k in configs:  # every config's code path once before anything is timed
        for i in range(warmup):
            runner.generate(k, [inputs[k][i % len(samples)]], max_new_tokens=max_new_tokens,
                            prefill_only=prefill_only)
    rng = random.Random(seed)
    records: dict[Knobs, list[dict[str, Any]]] = {k: [] for k in configs}
    for i, sample in enumerate(samples):
        order = list(configs)
        rng.shuffle(order)
        for k in order:
            (res,) = runner.generate(k, [inputs[k][i]], max_new_tokens=max_new_tokens, prefill_only=prefill_only)
            accuracy = 0.0 if hook is None else score(hook, res.text, sample)
            records[k].append(_record(k, sample, res, accuracy))
        if on_round is not None:
            on_round()
    return records


def environment(runner: MoERunner) -> dict[str, Any]:
    import transformers

    m = runner.model
    dev = m.device
    return {
        "backend": "torch",
        "model_source": m.source,
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu",
        "dtype": str(m.dtype).removeprefix("torch."),
        "experts_implementation": m.experts_implementation,
        "block_order": runner.block_order
        if isinstance(runner.block_order, str)
        else list(runner.block_order),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": sys.version.split()[0],
        # "graph" or "eager" when profiled through the serving engine (moe.engine), else "runner".
        "engine": runner.report.mode if hasattr(runner, "report") else "runner",
    }


def profile_grid(
    runner: MoERunner,
    *,
    dataset: str,
    grid: Grid,
    samples: Sequence[ProfileSample],
    out_dir: str | Path,
    max_new_tokens: int = 8,
    warmup: int = 2,
    prefill_only: bool = False,
    hook: AccuracyHook | None = None,
    hook_name: str | None = None,
    progress: bool = True,
    interleave: bool = True,
) -> ProfileReport:
    """Profile every config of `grid` not already in `out_dir` (a rerun resumes: written configs are
    skipped). `interleave` (default): rounds over samples, every config once per round in random
    order, files written when all rounds are done. Otherwise config after config, each file written
    as soon as its config is done."""
    if not samples:
        raise ValueError("samples is empty; give at least one sample to profile")
    configs = grid.configs()
    for knobs in configs:
        runner.validate(knobs)  # fail before the first (long) config, not in the middle
    report = ProfileReport()
    env = environment(runner)
    source = NO_ACCURACY if hook is None else f"eval hook {hook_name or getattr(hook, '__name__', 'hook')}"
    if warmup > 0:  # every shape the sweep's samples produce, once, before any config is timed
        from moe.warmup import freeze_heap, warm_shapes

        tiers = sorted({k.tier for k in configs}, key=TIERS.index)
        warm_shapes(runner, tiers, prompts=list(dict.fromkeys(s.prompt for s in samples))[:2])
        freeze_heap()
    todo = []
    for knobs in configs:
        done = existing_config_file(out_dir, dataset, knobs)
        if done is not None:
            report.skipped.append(done)
        else:
            todo.append(knobs)
    meta = dict(env, max_new_tokens=max_new_tokens, warmup_passes=warmup, prefill_only=prefill_only,
                order="interleaved" if interleave else "sequential")

    def write(knobs: Knobs, records: list[dict[str, Any]]) -> None:
        report.written.append(write_config_file(
            out_dir,
            dataset,
            tier=knobs.tier,
            top_k=knobs.top_k,
            num_active_blocks=knobs.num_active_blocks,
            per_sample_results=records,
            num_total_blocks=runner.model.num_blocks,
            active_block_indices=runner.active_blocks(knobs.num_active_blocks),
            extra={"accuracy_source": source, "profiler": meta},
        ))

    if interleave and todo:
        bar = _bar(len(samples), progress, unit="round")
        try:
            by_config = profile_interleaved(runner, todo, samples, max_new_tokens=max_new_tokens, warmup=warmup,
                                            prefill_only=prefill_only, hook=hook, on_round=lambda: bar.update(1))
        finally:
            bar.close()
        for knobs in todo:
            write(knobs, by_config[knobs])
        return report
    bar = _bar(len(todo), progress)
    try:
        for knobs in todo:
            bar.set_postfix_str(f"{knobs.tier} k{knobs.top_k} b{knobs.num_active_blocks}")
            records = profile_config(runner, knobs, samples, max_new_tokens=max_new_tokens, warmup=warmup,
                                     prefill_only=prefill_only, hook=hook)
            write(knobs, records)
            bar.update(1)
    finally:
        bar.close()
    return report


def _bar(total: int, enabled: bool, unit: str = "config") -> Any:
    from tqdm import tqdm  # a dependency of transformers, so present wherever this module runs

    return tqdm(total=total, desc="profile", unit=unit, disable=not enabled, file=sys.stderr)
