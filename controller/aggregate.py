"""Group samples by knob config and reduce each group to ConfigStats, exactly as the seed defines
`mean`, `median` and `max_accuracy`, plus the latency distribution (std, min, max, quantiles)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from controller.knobs import TIERS, Knobs
from controller.params import BuildParams
from controller.stats import ConfigStats

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


def config_codes(tier: npt.NDArray[np.generic], top_k: npt.NDArray[np.generic],
                 blocks: npt.NDArray[np.generic]) -> IntArray:
    """One int64 per sample that sorts like Knobs.sort_key (tier order, top_k, blocks)."""
    return (tier.astype(np.int64) * 1_000_000 + top_k.astype(np.int64) * 1_000
            + blocks.astype(np.int64))


def knobs_from_code(code: int) -> Knobs:
    return Knobs(TIERS[code // 1_000_000], (code // 1_000) % 1_000, code % 1_000)


def aggregate_group(knobs: Knobs, accuracy: FloatArray, latency: FloatArray,
                    params: BuildParams) -> ConfigStats:
    """Reduce one config's samples (in load order: max_accuracy takes the first best sample)."""
    method = params.aggregation_method
    if method == "mean":
        acc, lat = float(np.mean(accuracy)), float(np.mean(latency))
    elif method == "median":
        acc, lat = float(np.median(accuracy)), float(np.median(latency))
    else:  # max_accuracy: accuracy and latency of the best-accuracy sample
        best = int(np.argmax(accuracy))
        acc, lat = float(accuracy[best]), float(latency[best])
    p90, p95, p99 = (float(q) for q in np.quantile(latency, (0.90, 0.95, 0.99)))
    if params.latency_quantile is not None:
        lat = float(np.quantile(latency, params.latency_quantile))
    return ConfigStats(
        knobs=knobs,
        num_samples=int(len(accuracy)),
        accuracy=acc,
        latency_ms=lat,
        accuracy_std=float(np.std(accuracy)),
        latency_std=float(np.std(latency)),
        accuracy_mean=float(np.mean(accuracy)),
        accuracy_median=float(np.median(accuracy)),
        latency_mean=float(np.mean(latency)),
        latency_median=float(np.median(latency)),
        latency_min=float(np.min(latency)),
        latency_max=float(np.max(latency)),
        latency_p90=p90,
        latency_p95=p95,
        latency_p99=p99,
    )


def aggregate_by_config(codes: IntArray, accuracy: FloatArray, latency: FloatArray,
                        params: BuildParams) -> list[ConfigStats]:
    """ConfigStats for every config present, in canonical knob order."""
    if len(codes) == 0:
        return []
    order = np.argsort(codes, kind="stable")  # stable: keeps load order inside a group
    sorted_codes = codes[order]
    starts = np.flatnonzero(np.r_[True, sorted_codes[1:] != sorted_codes[:-1]])
    ends = np.r_[starts[1:], len(order)]
    out = []
    for s, e in zip(starts, ends):
        idx = order[s:e]
        out.append(aggregate_group(knobs_from_code(int(sorted_codes[s])), accuracy[idx], latency[idx], params))
    return out
