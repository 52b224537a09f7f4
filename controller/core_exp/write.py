"""Write profiling results in the core_exp on-disk format (docs/core-exp-format.md)."""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from controller.blocks import active_blocks
from controller.datasets import dataset_folder
from controller.errors import KnobError
from controller.knobs import TIER_CROP_RANGE, Knobs, vision_tokens

STAGE_KEYS: tuple[str, ...] = (
    "T_vision_total",
    "T_LLM_prefill",
    "T_LLM_decode",
    "T_total",
    "T_decode_per_token",
)
KNOB_RECORD_KEYS: tuple[str, ...] = ("tier", "tier_range", "top_k", "num_active_blocks")


def config_filename(
    dataset: str, tier: str, selected_crops_mean: float, top_k: int, num_active_blocks: int
) -> str:
    crops = int(selected_crops_mean) if math.isfinite(selected_crops_mean) else 0
    task = dataset_folder(dataset)
    return f"{task}_imgsizetier-{tier}_crops{crops}_topk{top_k}_blocks{num_active_blocks}.json"


def default_active_blocks(num_active_blocks: int, num_total_blocks: int = 16) -> list[int]:
    """Blocks kept when only `num_active_blocks` of `num_total_blocks` run, in ascending order: the
    runner's own rule (controller.blocks, "molmoe" order), so a file records the blocks it skipped."""
    if isinstance(num_total_blocks, bool) or not isinstance(num_total_blocks, int) or num_total_blocks < 1:
        raise KnobError("num_total_blocks", num_total_blocks, "a positive integer, e.g. 16")
    return active_blocks(num_active_blocks, num_total_blocks, "molmoe")


def _finite(values: Iterable[Any]) -> np.ndarray[Any, np.dtype[np.float64]]:
    """Numeric values with None, NaN and inf left out (real files hold all three)."""
    out = [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    arr = np.asarray(out, dtype=np.float64)
    return arr[np.isfinite(arr)]


def _mean_std(values: Iterable[Any]) -> tuple[float, float]:
    arr = _finite(values)
    if arr.size == 0:
        return math.nan, math.nan
    return float(arr.mean()), float(arr.std())


def _stats(values: Iterable[Any]) -> dict[str, float]:
    arr = _finite(values)
    if arr.size == 0:
        return dict.fromkeys(("mean", "std", "p50", "p95", "p99"), math.nan)
    p50, p95, p99 = (float(v) for v in np.percentile(arr, [50, 95, 99]))
    return {"mean": float(arr.mean()), "std": float(arr.std()), "p50": p50, "p95": p95, "p99": p99}


def _per_step_stats(records: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    by_position: dict[int, list[float]] = {}
    for rec in records:
        for pos, runs in enumerate(rec.get("T_decode_per_step") or []):
            by_position.setdefault(pos, []).extend(runs or [])
    out: dict[str, dict[str, float]] = {}
    for pos in sorted(by_position):
        stats = _stats(by_position[pos])
        out[f"pos_{pos}"] = {**stats, "count": int(_finite(by_position[pos]).size)}
    return out


def latency_stats(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """`{stage}_{mean,std,p50,p95,p99}` over the records' finite values, plus per-position decode stats."""
    out: dict[str, Any] = {}
    for key in STAGE_KEYS:
        for stat, value in _stats(rec.get(key) for rec in records).items():
            out[f"{key}_{stat}"] = value
    out["T_decode_per_step_stats"] = _per_step_stats(records)
    return out


def sample_record(
    *,
    sample_id: int,
    tier: str,
    top_k: int,
    num_active_blocks: int,
    accuracy: float | None,
    T_vision_total: float,
    T_LLM_prefill: float,
    T_LLM_decode: float,
    T_total: float,
    T_decode_per_step: Sequence[Sequence[float]],
    output_tokens: int,
    content_tokens: int,
    ends_with_eos: bool,
    actual_num_crops: int,
    actual_tiling: Sequence[int],
    actual_image_size: Sequence[int],
    actual_vision_tokens: int,
    actual_text_tokens: int,
    pred: str,
    question_id: int | str,
    answers: Sequence[str],
    image_id: int | str,
    T_decode_per_token: float | None = None,
    target_vision_tokens: int | None = None,
) -> dict[str, Any]:
    """One per-sample record with every key of the format, in the format's key order (times in ms)."""
    Knobs(tier, top_k, num_active_blocks)  # validates the knobs
    lo, hi = TIER_CROP_RANGE[tier]
    if T_decode_per_token is None:
        T_decode_per_token = T_LLM_decode / output_tokens if output_tokens > 0 else 0.0
    return {
        "sample_id": sample_id,
        "tier": tier,
        "tier_range": {"min_crops": lo, "max_crops": hi},
        "top_k": top_k,
        "num_active_blocks": num_active_blocks,
        "accuracy": accuracy,
        "T_vision_total": T_vision_total,
        "T_LLM_prefill": T_LLM_prefill,
        "T_LLM_decode": T_LLM_decode,
        "T_total": T_total,
        "T_decode_per_token": T_decode_per_token,
        "T_decode_per_step": [list(runs) for runs in T_decode_per_step],
        "output_tokens": output_tokens,
        "content_tokens": content_tokens,
        "ends_with_eos": ends_with_eos,
        "actual_num_crops": actual_num_crops,
        "actual_tiling": list(actual_tiling),
        "actual_image_size": list(actual_image_size),
        "target_vision_tokens": (
            vision_tokens(actual_num_crops) if target_vision_tokens is None else target_vision_tokens
        ),
        "actual_vision_tokens": actual_vision_tokens,
        "actual_text_tokens": actual_text_tokens,
        "total_sequence_length": actual_vision_tokens + actual_text_tokens,
        "pred": pred,
        "metadata": {"question_id": question_id, "answers": list(answers), "image_id": image_id},
    }


def build_config_result(
    *,
    tier: str,
    top_k: int,
    num_active_blocks: int,
    per_sample_results: Sequence[Mapping[str, Any]],
    num_total_blocks: int = 16,
    active_block_indices: Sequence[int] | None = None,
    max_crops: int | None = None,
) -> dict[str, Any]:
    """The whole config-file object; every aggregate is computed from `per_sample_results`."""
    Knobs(tier, top_k, num_active_blocks)
    lo, hi = TIER_CROP_RANGE[tier]
    records = list(per_sample_results)
    crops = [rec.get("actual_num_crops") for rec in records]
    distribution: dict[str, int] = {}
    for c in sorted(int(c) for c in crops if isinstance(c, int) and not isinstance(c, bool)):
        distribution[str(c)] = distribution.get(str(c), 0) + 1
    crops_mean, crops_std = _mean_std(crops)
    target_mean, target_std = _mean_std(rec.get("target_vision_tokens") for rec in records)
    actual_mean, actual_std = _mean_std(rec.get("actual_vision_tokens") for rec in records)
    acc_mean, acc_std = _mean_std(rec.get("accuracy") for rec in records)
    if active_block_indices is None:
        active_block_indices = default_active_blocks(num_active_blocks, num_total_blocks)
    return {
        "tier": tier,
        "tier_range": {"min_crops": lo, "max_crops": hi},
        "max_crops": hi if max_crops is None else max_crops,
        "selected_crops_distribution": distribution,
        "selected_crops_mean": crops_mean,
        "selected_crops_std": crops_std,
        "target_vision_tokens_mean": target_mean,
        "target_vision_tokens_std": target_std,
        "actual_vision_tokens_mean": actual_mean,
        "actual_vision_tokens_std": actual_std,
        "top_k": top_k,
        "num_active_blocks": num_active_blocks,
        "num_total_blocks": num_total_blocks,
        "active_block_indices": list(active_block_indices),
        "num_samples": len(records),
        "accuracy": acc_mean,
        "accuracy_std": acc_std,
        "latency_stats": latency_stats(records),
        "per_sample_results": [dict(rec) for rec in records],
    }


def write_json_atomic(path: Path, obj: Any) -> Path:
    """Write JSON through a temp file and a rename, so readers never see half a file.

    NaN is written as the bare literal `NaN`, as Python's json (and the real profiler) does.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(obj, f, separators=(",", ":"), allow_nan=True)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_config_file(
    results_dir: str | os.PathLike[str],
    dataset: str,
    *,
    tier: str,
    top_k: int,
    num_active_blocks: int,
    per_sample_results: Sequence[Mapping[str, Any]],
    num_total_blocks: int = 16,
    active_block_indices: Sequence[int] | None = None,
    max_crops: int | None = None,
    rank: int | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write one config file to `<results_dir>/<dataset-folder>/<name>.json` and return its path.

    `rank` writes the per-rank file `<name>_rank<r>.json` that multi-GPU runs leave before merging.
    `extra`: more top-level keys (e.g. a profiler's environment), added after the standard ones.
    """
    result = build_config_result(
        tier=tier,
        top_k=top_k,
        num_active_blocks=num_active_blocks,
        per_sample_results=per_sample_results,
        num_total_blocks=num_total_blocks,
        active_block_indices=active_block_indices,
        max_crops=max_crops,
    )
    result.update(extra or {})
    name = config_filename(dataset, tier, result["selected_crops_mean"], top_k, num_active_blocks)
    if rank is not None:
        name = name.removesuffix(".json") + f"_rank{rank}.json"
    return write_json_atomic(Path(results_dir) / dataset_folder(dataset) / name, result)
