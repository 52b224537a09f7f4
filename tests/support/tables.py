"""Synthetic tables with plausible magnitudes, for tests and benchmarks."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from controller import BuildParams, SampleColumns, Table, build_table
from controller.knobs import TIERS

GRID = (TIERS, (4, 6, 8), (12, 14, 16))



def synthetic_table(
    latency_scale: float = 1.0,
    datasets: Sequence[str] = ("vqav2", "textvqa"),
    samples_per_config: int = 3,
    grid: tuple[Sequence[str], Sequence[int], Sequence[int]] = GRID,
    decode_ms_per_token: float | None = None,
) -> Table:
    """A table over a 3x3x3 grid with plausible magnitudes (40-200 ms). `latency_scale` moves every
    latency, so that tables built with different scales pick different knobs for one budget.
    `decode_ms_per_token` gives every config decode statistics (more blocks decode slower)."""
    rows = []
    for d, _ in enumerate(datasets):
        for tier in grid[0]:
            ti = TIERS.index(tier)
            for k in grid[1]:
                for b in grid[2]:
                    latency = (40 + 35 * ti + 3 * k + 2.5 * b + 4 * d) * latency_scale
                    accuracy = 0.40 + 0.08 * ti + 0.012 * k + 0.006 * b - 0.02 * d
                    for s in range(samples_per_config):
                        rows.append((d, ti, k, b, accuracy, latency + s, latency + s + 20, s))
    a = np.array(rows, dtype=np.float64)
    columns = {
        "dataset": a[:, 0],
        "tier": a[:, 1],
        "top_k": a[:, 2],
        "num_active_blocks": a[:, 3],
        "accuracy": a[:, 4],
        "latency_prefill": a[:, 5],
        "latency_total": a[:, 6],
        "sample_key": a[:, 7],
        "key_from_metadata": np.ones(len(a), dtype=bool),
    }
    if decode_ms_per_token is not None:
        columns["decode_ms_per_token"] = decode_ms_per_token * a[:, 3] / 16 * latency_scale
    samples = SampleColumns(tuple(datasets), columns)  # type: ignore[arg-type]
    return build_table(samples, BuildParams(), source={"synthetic": {"latency_scale": latency_scale}})

