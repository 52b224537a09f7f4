"""Per-config statistics: what a table stores for one (tier, top_k, num_active_blocks)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from controller.knobs import Knobs

LATENCY_QUANTILES = (0.90, 0.95, 0.99)


@dataclass(frozen=True)
class ConfigStats:
    """`accuracy` and `latency_ms` are the two numbers the decision rule uses; the rest describe the
    distribution. Optional fields are None only for tables imported from the reference format."""

    knobs: Knobs
    num_samples: int
    accuracy: float
    latency_ms: float
    accuracy_std: float
    latency_std: float
    accuracy_mean: float | None = None
    accuracy_median: float | None = None
    latency_mean: float | None = None
    latency_median: float | None = None
    latency_min: float | None = None
    latency_max: float | None = None
    latency_p90: float | None = None
    latency_p95: float | None = None
    latency_p99: float | None = None
    # Decode milliseconds per generated token (core_exp T_LLM_decode / output_tokens), aggregated
    # like the latency; None for tables built before it existed or from files without decode times.
    decode_ms_per_token: float | None = None

    @property
    def service_ms(self) -> float:
        """What the model is expected to spend on the first token on average: the mean where the
        table has one (`latency_ms` is a tail figure in quantile tables), else `latency_ms`."""
        mean = self.latency_mean
        return mean if mean is not None and mean > 0 else self.latency_ms

    def to_record(self) -> dict[str, Any]:
        # Explicit fields rather than dataclasses.asdict, whose deep copy dominated table writes.
        record = self.knobs.as_dict()
        record.update({name: getattr(self, name) for name in _VALUE_FIELDS})
        return record

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> ConfigStats:
        fields = {k: v for k, v in record.items() if k not in ("tier", "top_k", "num_active_blocks")}
        return cls(knobs=Knobs.from_mapping(record), **fields)

    def reference_dict(self) -> dict[str, Any]:
        """The reference implementation's per-config dict (its config_table values)."""
        return {
            "accuracy": self.accuracy,
            "latency": self.latency_ms,
            "num_samples": self.num_samples,
            "accuracy_std": self.accuracy_std,
            "latency_std": self.latency_std,
        }


_VALUE_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(ConfigStats) if f.name != "knobs")
