"""Parse one result file's bytes (per-config JSON, the older `summary` layout, or JSONL) into an entry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydantic_core

from controller.core_exp.cache import CacheEntry
from controller.core_exp.records import (
    DROP_UNREADABLE_LINE,
    KNOB_KEYS,
    ROW_DTYPE,
    count_drop,
    records_to_entry,
)
from controller.datasets import normalize_dataset_name


def _skipped(reason: str) -> CacheEntry:
    return CacheEntry(
        np.zeros(0, dtype=ROW_DTYPE), {"datasets": [], "dropped": {}, "records": 0, "skipped": reason}
    )


def _parse_json(raw: bytes, dataset: str) -> CacheEntry:
    try:
        data = pydantic_core.from_json(raw, allow_inf_nan=True, cache_strings="all")
    except ValueError as e:
        return _skipped(f"unreadable JSON (truncated or corrupt): {e}")
    if not isinstance(data, dict):
        return _skipped("not a result file: top level is not an object")
    records = data.get("per_sample_results")
    if not isinstance(records, list):
        return _skipped("not a result file: no per_sample_results list")
    summary = data.get("summary")
    first = summary[0] if isinstance(summary, list) and summary and isinstance(summary[0], dict) else {}
    knobs = tuple(data[k] if data.get(k) is not None else first.get(k) for k in KNOB_KEYS)
    del data, summary, first
    return records_to_entry(records, None, dataset, (knobs[0], knobs[1], knobs[2]), pos_per_config=False)


def _parse_jsonl(raw: bytes, dataset: str | None) -> CacheEntry:
    lines = [ln for ln in raw.split(b"\n") if ln.strip()]
    dropped: dict[str, int] = {}
    try:
        records = pydantic_core.from_json(
            b"[" + b",".join(lines) + b"]", allow_inf_nan=True, cache_strings="all"
        )
    except ValueError:
        records = []
        for ln in lines:
            try:
                records.append(pydantic_core.from_json(ln, allow_inf_nan=True, cache_strings="all"))
            except ValueError:
                count_drop(dropped, DROP_UNREADABLE_LINE)
    if not isinstance(records, list):  # pragma: no cover - an array literal always parses to a list
        return _skipped("unreadable JSONL")
    if not records and not dropped:
        return _skipped("not a result file: no records")
    per_record: list[str | None] | None = None
    if dataset is None:
        per_record = []
        for r in records:
            name = r.get("dataset") if type(r) is dict else None
            per_record.append(
                normalize_dataset_name(name) if isinstance(name, str) and name.strip() else None
            )
    return records_to_entry(records, per_record, dataset, (None, None, None), True, dropped)


def parse_file(path: Path, dataset: str | None, raw: bytes) -> CacheEntry:
    """Parse one result file's bytes; `dataset` is its folder's dataset (None for top-level JSONL)."""
    if path.suffix == ".jsonl":
        return _parse_jsonl(raw, dataset)
    assert dataset is not None
    return _parse_json(raw, dataset)


