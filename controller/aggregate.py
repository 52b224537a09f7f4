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


def decode_per_token(decode: FloatArray | None, params: BuildParams) -> float | None:
    """Per-token decode time of one config, reduced like its latency (the quantile when the table
    uses one, else the median for `median`, else the mean); None when no sample has decode times."""
    if decode is None:
        return None
    known = decode[np.isfinite(decode) & (decode > 0)]
    if len(known) == 0:
        return None
    if params.latency_quantile is not None:
        return float(np.quantile(known, params.latency_quantile))
    if params.aggregation_method == "median":
        return float(np.median(known))
    return float(np.mean(known))


def aggregate_group(knobs: Knobs, accuracy: FloatArray, latency: FloatArray,
                    params: BuildParams, decode: FloatArray | None = None) -> ConfigStats:
    """Reduce one config's samples (in load order: max_accuracy takes the first best sample)."""
    # One quantile call for every latency order statistic (np.median is the 0.5 quantile).
    qs = (0.0, 0.5, 0.90, 0.95, 0.99, 1.0) + ((params.latency_quantile,) if params.latency_quantile else ())
    lat_q = np.quantile(latency, qs).tolist()
    acc_mean, acc_median = float(np.mean(accuracy)), float(np.median(accuracy))
    lat_mean = float(np.mean(latency))
    method = params.aggregation_method
    if method == "mean":
        acc, lat = acc_mean, lat_mean
    elif method == "median":
        acc, lat = acc_median, lat_q[1]
    else:  # max_accuracy: accuracy and latency of the best-accuracy sample
        best = int(np.argmax(accuracy))
        acc, lat = float(accuracy[best]), float(latency[best])
    if params.latency_quantile is not None:
        lat = lat_q[6]
    return ConfigStats(
        knobs=knobs,
        num_samples=int(len(accuracy)),
        accuracy=acc,
        latency_ms=lat,
        accuracy_std=float(np.std(accuracy)),
        latency_std=float(np.std(latency)),
        accuracy_mean=acc_mean,
        accuracy_median=acc_median,
        latency_mean=lat_mean,
        latency_median=lat_q[1],
        latency_min=lat_q[0],
        latency_max=lat_q[5],
        latency_p90=lat_q[2],
        latency_p95=lat_q[3],
        latency_p99=lat_q[4],
        decode_ms_per_token=decode_per_token(decode, params),
    )


def aggregate_by_config(codes: IntArray, accuracy: FloatArray, latency: FloatArray,
                        params: BuildParams, decode: FloatArray | None = None) -> list[ConfigStats]:
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
        out.append(aggregate_group(knobs_from_code(int(sorted_codes[s])), accuracy[idx], latency[idx], params,
                                   None if decode is None else decode[idx]))
    return out
