"""Per-sample record dicts (the seed's `profiling_results` list) to columnar samples, through the
same extraction the file loader uses, so both apply one set of rules and drop reasons."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from controller.loader import columns_from_rows, position_keys, records_to_entry
from controller.samples import SampleColumns

DEFAULT_DATASET = "default"


def records_to_samples(records: Iterable[Mapping[str, Any]]) -> tuple[SampleColumns, dict[str, int]]:
    """Columns from record dicts (knob keys in each record; optional `dataset` and `metadata`);
    records with missing/invalid knobs or non-finite accuracy are dropped and counted by reason."""
    recs: list[Any] = list(records)
    datasets: list[str | None] = [
        str(r.get("dataset") or DEFAULT_DATASET) if isinstance(r, Mapping) else None for r in recs
    ]
    entry = records_to_entry(recs, datasets, None, (None, None, None), pos_per_config=True)
    rows, names = entry.rows, list(entry.meta["datasets"])
    keys = rows["qkey"].copy()
    for i, name in enumerate(names):
        sel = ~rows["has_qkey"] & (rows["ds"] == i)
        if sel.any():
            keys[sel] = position_keys(name, rows["pos"][sel])
    columns = columns_from_rows(rows, rows["ds"], keys)
    return SampleColumns(tuple(names), columns), dict(entry.meta["dropped"])
