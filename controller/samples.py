"""Columnar per-sample profiling data: the one shape every loader produces and every builder reads."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from controller.knobs import TIERS

# Column name -> dtype. Latencies are milliseconds; they may still hold zeros or NaN here, because
# which latency is valid depends on the metric the builder is asked for.
COLUMNS: dict[str, type] = {
    "dataset": np.int16,  # index into SampleColumns.datasets
    "tier": np.int8,  # index into knobs.TIERS
    "top_k": np.int16,
    "num_active_blocks": np.int16,
    "accuracy": np.float64,  # always finite (loaders drop the rest)
    "latency_prefill": np.float64,  # T_vision_total + T_LLM_prefill, else T_total
    "latency_total": np.float64,  # T_total
    "decode_ms_per_token": np.float64,  # T_LLM_decode / output_tokens; NaN where unknown
    "sample_key": np.uint64,  # identity of the input sample across configs (dataset + question id)
    "key_from_metadata": np.bool_,  # False: key came from the record's position, not a question id
}

# Columns added after the first release: callers that leave them out get NaN ("unknown").
OPTIONAL_COLUMNS = frozenset({"decode_ms_per_token"})


@dataclass
class SampleColumns:
    datasets: tuple[str, ...]
    columns: dict[str, npt.NDArray[np.generic]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.columns["accuracy"]) if "accuracy" in self.columns else 0
        for name, dtype in COLUMNS.items():
            col = self.columns.get(name)
            if col is None and name in OPTIONAL_COLUMNS:
                col = np.full(n, np.nan)  # callers that predate the column: unknown, not zero
            self.columns[name] = np.zeros(0, dtype=dtype) if col is None else np.asarray(col, dtype=dtype)
        lengths = {len(c) for c in self.columns.values()}
        assert len(lengths) == 1, f"columns of unequal length: {lengths}"

    def __len__(self) -> int:
        return len(self.columns["accuracy"])

    def __getitem__(self, name: str) -> npt.NDArray[np.generic]:
        return self.columns[name]

    def select(self, mask: npt.NDArray[np.bool_]) -> SampleColumns:
        return SampleColumns(self.datasets, {k: v[mask] for k, v in self.columns.items()})

    def tier_names(self) -> list[str]:
        return [TIERS[i] for i in self.columns["tier"]]
