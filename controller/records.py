"""Per-sample record dicts (the seed's `profiling_results` list) to columnar samples."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from controller.knobs import TIERS
from controller.samples import SampleColumns


def _num(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return math.nan
    return float(value)


def prefill_latency(record: Mapping[str, Any]) -> float:
    """T_vision_total + T_LLM_prefill; T_total when both are missing or zero (as the seed)."""
    parts = [_num(record.get("T_vision_total", 0.0)), _num(record.get("T_LLM_prefill", 0.0))]
    parts = [0.0 if math.isnan(p) else p for p in parts]
    total = parts[0] + parts[1]
    return total if total > 0 else _num(record.get("T_total", 0.0))


def sample_key(dataset: str, identity: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{dataset}\x00{identity}".encode(), digest_size=8).digest(), "little")


def records_to_samples(records: Iterable[Mapping[str, Any]]) -> tuple[SampleColumns, dict[str, int]]:
    """Columns from record dicts; records with missing/invalid knobs or non-finite accuracy are
    dropped and counted by reason."""
    rows: list[tuple[str, int, int, int, float, float, float, str, bool]] = []
    dropped: dict[str, int] = {}
    for pos, r in enumerate(records):
        tier, k, n = r.get("tier"), r.get("top_k"), r.get("num_active_blocks")
        if tier not in TIERS or not isinstance(k, int) or not isinstance(n, int) or k < 1 or n < 1:
            dropped["missing_knobs"] = dropped.get("missing_knobs", 0) + 1
            continue
        acc = _num(r.get("accuracy"))
        if not math.isfinite(acc):
            dropped["nonfinite_accuracy"] = dropped.get("nonfinite_accuracy", 0) + 1
            continue
        meta = r.get("metadata") if isinstance(r.get("metadata"), Mapping) else {}
        qid = meta.get("question_id") if meta else None
        dataset = str(r.get("dataset", "default"))
        identity = str(qid) if qid is not None else f"#{pos}"
        rows.append((dataset, TIERS.index(str(tier)), k, n, acc, prefill_latency(r), _num(r.get("T_total", 0.0)),
                     identity, qid is not None))
    names = tuple(sorted({row[0] for row in rows}))
    cols: dict[str, np.ndarray[Any, Any]] = {
        "dataset": np.array([names.index(row[0]) for row in rows], dtype=np.int16),
        "tier": np.array([row[1] for row in rows], dtype=np.int8),
        "top_k": np.array([row[2] for row in rows], dtype=np.int16),
        "num_active_blocks": np.array([row[3] for row in rows], dtype=np.int16),
        "accuracy": np.array([row[4] for row in rows], dtype=np.float64),
        "latency_prefill": np.array([row[5] for row in rows], dtype=np.float64),
        "latency_total": np.array([row[6] for row in rows], dtype=np.float64),
        "sample_key": np.array([sample_key(row[0], row[7]) for row in rows], dtype=np.uint64),
        "key_from_metadata": np.array([row[8] for row in rows], dtype=bool),
    }
    return SampleColumns(names, cols), dropped
