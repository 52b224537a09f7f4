"""Record extraction: per-sample record dicts to ROW_DTYPE rows, with one set of drop rules for
files and for the reference API's `profiling_results` list (docs/core-exp-format.md)."""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from controller.core_exp.cache import CacheEntry
from controller.knobs import TIERS
from controller.samples import SampleColumns

# One parsed row per kept sample; `ds` indexes the file's own dataset list (meta["datasets"]).
ROW_DTYPE: np.dtype[Any] = np.dtype(
    [
        ("ds", np.int16),
        ("tier", np.int8),
        ("top_k", np.int16),
        ("num_active_blocks", np.int16),
        ("accuracy", np.float64),
        ("latency_prefill", np.float64),
        ("latency_total", np.float64),
        # T_LLM_decode / output_tokens (ms per generated token); NaN where either is missing or 0.
        ("decode_per_token", np.float64),
        ("qkey", np.uint64),  # hash of (dataset, question id); valid where has_qkey
        ("has_qkey", np.bool_),
        ("pos", np.int64),  # record index within its config in this file (before any drop)
    ]
)

QID_KEYS: tuple[str, ...] = ("question_id", "qid", "id", "example_id")
KNOB_KEYS: tuple[str, str, str] = ("tier", "top_k", "num_active_blocks")
_KNOB_MAX = np.iinfo(np.int16).max

# Drop reasons (LoadReport.dropped keys).
DROP_INVALID_RECORD = "record is not an object"
DROP_MISSING_KNOBS = "missing knobs"
DROP_INVALID_KNOBS = "invalid knobs"
DROP_MISSING_ACCURACY = "missing accuracy"
DROP_NONFINITE_ACCURACY = "non-finite accuracy"
DROP_MISSING_DATASET = "missing dataset"
DROP_UNREADABLE_LINE = "unreadable JSONL line"


def _floats(values: list[Any]) -> npt.NDArray[np.float64]:
    """Numbers to float64; None and anything non-numeric become NaN."""
    try:
        return np.array(values, dtype=np.float64)
    except (TypeError, ValueError):
        out = np.full(len(values), np.nan)
        for i, v in enumerate(values):
            if isinstance(v, (int, float)):
                out[i] = float(v)
        return out


def _as_knob_int(v: Any) -> int | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v if 1 <= v <= _KNOB_MAX else None
    if isinstance(v, float) and v.is_integer():
        return _as_knob_int(int(v))
    return None


def _knob_code(tier: Any, top_k: Any, blocks: Any) -> tuple[int, int, int] | str:
    """Validated (tier index, top_k, blocks), or the drop reason."""
    if tier is None or top_k is None or blocks is None:
        return DROP_MISSING_KNOBS
    if not isinstance(tier, str) or tier not in TIERS:
        return DROP_INVALID_KNOBS
    k, b = _as_knob_int(top_k), _as_knob_int(blocks)
    if k is None or b is None:
        return DROP_INVALID_KNOBS
    return (TIERS.index(tier), k, b)


def _qid(md: Any) -> Any:
    if type(md) is dict:
        for key in QID_KEYS:
            v = md.get(key)
            if v is not None and v != "":
                return v
    return None


def _key_hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


@functools.lru_cache(maxsize=1 << 17, typed=True)  # the same questions recur in every config
def question_key(dataset: str, qid: Any) -> int:
    """sample_key of a record whose metadata carries a question id."""
    return _key_hash(f"{dataset}\x00q\x00{qid}")


_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def position_keys(dataset: str, positions: npt.NDArray[np.int64]) -> npt.NDArray[np.uint64]:
    """sample_key of records without a question id: splitmix64 of a per-dataset seed plus position."""
    seed = np.uint64(_key_hash(f"{dataset}\x00pos"))
    with np.errstate(over="ignore"):
        z = positions.astype(np.uint64) + seed
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        out: npt.NDArray[np.uint64] = z ^ (z >> np.uint64(31))
        return out


def count_drop(dropped: dict[str, int], reason: str, n: int = 1) -> None:
    if n:
        dropped[reason] = dropped.get(reason, 0) + n


def records_to_entry(
    records: list[Any],
    datasets_per_record: list[str | None] | None,
    default_dataset: str | None,
    default_knobs: tuple[Any, Any, Any],
    pos_per_config: bool,
    extra_dropped: dict[str, int] | None = None,
) -> CacheEntry:
    """Extract the needed fields of a file's records with a few list comprehensions, then numpy."""
    n = len(records)
    dropped: dict[str, int] = dict(extra_dropped or {})
    bad_record = np.zeros(n, dtype=bool)
    if not all(type(r) is dict for r in records):
        for i, r in enumerate(records):
            if type(r) is not dict:
                bad_record[i] = True
        records = [r if type(r) is dict else {} for r in records]

    dt, dk, db = default_knobs
    tiers = [r.get("tier", dt) for r in records]
    ks = [r.get("top_k", dk) for r in records]
    bs = [r.get("num_active_blocks", db) for r in records]

    # Knobs: validate each distinct combination once (a file usually holds one).
    memo: dict[tuple[Any, ...], tuple[int, int, int] | str] = {}
    codes: list[tuple[int, int, int] | str] = []
    for t, k, b in zip(tiers, ks, bs, strict=True):
        try:
            mk = (t, k, b, type(t), type(k), type(b))
            c = memo.get(mk)
            if c is None:
                c = memo[mk] = _knob_code(t, k, b)
        except TypeError:  # unhashable value (list, dict): invalid anyway
            c = _knob_code(t, k, b)
        codes.append(c)

    acc_raw = [r.get("accuracy") for r in records]
    acc = _floats(acc_raw)
    vis = _floats([r.get("T_vision_total") or 0.0 for r in records])
    pre = _floats([r.get("T_LLM_prefill") or 0.0 for r in records])
    dec = _floats([r.get("T_LLM_decode") or 0.0 for r in records])
    tot_raw = _floats([r.get("T_total") or 0.0 for r in records])
    out_tok = _floats([r.get("output_tokens") or 0.0 for r in records])
    qids = [_qid(r.get("metadata")) for r in records]

    # Datasets: per record (JSONL at the top level) or the folder's.
    ds_names: list[str] = []
    ds_index: dict[str, int] = {}
    ds_col = np.zeros(n, dtype=np.int16)
    no_dataset = np.zeros(n, dtype=bool)
    if default_dataset is not None:
        ds_names.append(default_dataset)
        ds_index[default_dataset] = 0
    if datasets_per_record is not None and default_dataset is None:
        for i, name in enumerate(datasets_per_record):
            if name is None:
                no_dataset[i] = True
                continue
            j = ds_index.get(name)
            if j is None:
                j = ds_index[name] = len(ds_names)
                ds_names.append(name)
            ds_col[i] = j

    # Latencies (docs/core-exp-format.md): T_total from parts when 0, but only when vision or prefill
    # was timed; a sample whose timing failed (vision, prefill and T_total all 0) keeps T_total = 0, so
    # the build drops it as zero latency instead of pricing it at decode time alone.
    total = np.where((tot_raw == 0) & ((vis != 0) | (pre != 0)), vis + pre + dec, tot_raw)
    prefill = vis + pre
    prefill = np.where((vis == 0) & (pre == 0), tot_raw, prefill)
    with np.errstate(divide="ignore", invalid="ignore"):
        per_token = np.where((dec > 0) & (out_tok > 0), dec / out_tok, np.nan)
    per_token = np.where(np.isfinite(per_token), per_token, np.nan)

    # Keep mask and per-reason drops, first reason wins.
    keep = np.ones(n, dtype=bool)

    def drop(mask: npt.NDArray[np.bool_], reason: str) -> None:
        hit = mask & keep
        count_drop(dropped, reason, int(hit.sum()))
        keep[hit] = False

    drop(bad_record, DROP_INVALID_RECORD)
    drop(no_dataset, DROP_MISSING_DATASET)
    knob_ok = np.fromiter((type(c) is tuple for c in codes), dtype=bool, count=n)
    if not knob_ok.all():
        drop(np.array([c == DROP_MISSING_KNOBS for c in codes], dtype=bool), DROP_MISSING_KNOBS)
        drop(~knob_ok, DROP_INVALID_KNOBS)
    finite = np.isfinite(acc)
    if not finite.all():
        drop(np.array([a is None for a in acc_raw], dtype=bool), DROP_MISSING_ACCURACY)
        drop(~finite, DROP_NONFINITE_ACCURACY)

    knob_arr = np.array([c if type(c) is tuple else (0, 0, 0) for c in codes], dtype=np.int64).reshape(n, 3)

    # Position of each record within its (dataset, config) in this file, counting dropped records too.
    if pos_per_config:
        counters: dict[tuple[Any, ...], int] = {}
        pos_list = []
        for i in range(n):
            gk = (int(ds_col[i]), codes[i] if type(codes[i]) is tuple else None)
            seen = counters.get(gk, 0)
            counters[gk] = seen + 1
            pos_list.append(seen)
        pos = np.array(pos_list, dtype=np.int64)
    else:
        pos = np.arange(n, dtype=np.int64)

    idx = np.flatnonzero(keep)
    rows = np.zeros(len(idx), dtype=ROW_DTYPE)
    rows["ds"] = ds_col[idx]
    rows["tier"] = knob_arr[idx, 0]
    rows["top_k"] = knob_arr[idx, 1]
    rows["num_active_blocks"] = knob_arr[idx, 2]
    rows["accuracy"] = acc[idx]
    rows["latency_prefill"] = prefill[idx]
    rows["latency_total"] = total[idx]
    rows["decode_per_token"] = per_token[idx]
    rows["pos"] = pos[idx]
    qkeys = rows["qkey"]
    has = rows["has_qkey"]
    for out_i, i in enumerate(idx.tolist()):
        q = qids[i]
        if q is not None:
            try:
                qkeys[out_i] = question_key(ds_names[ds_col[i]], q)
            except TypeError:  # an unhashable id (list, object) is still an id
                qkeys[out_i] = question_key(ds_names[ds_col[i]], json.dumps(q, sort_keys=True))
            has[out_i] = True
    meta = {"datasets": ds_names, "dropped": dropped, "records": n, "skipped": None}
    return CacheEntry(rows, meta)


def columns_from_rows(
    rows: npt.NDArray[Any], dataset: npt.NDArray[np.generic], sample_key: npt.NDArray[np.generic]
) -> dict[str, npt.NDArray[np.generic]]:
    """SampleColumns' columns from parsed ROW_DTYPE rows, given their final dataset index and key."""
    columns: dict[str, npt.NDArray[np.generic]] = {
        name: rows[name]
        for name in ("tier", "top_k", "num_active_blocks", "accuracy", "latency_prefill", "latency_total")
    }
    columns["decode_ms_per_token"] = rows["decode_per_token"]
    columns.update(dataset=dataset, sample_key=sample_key, key_from_metadata=rows["has_qkey"])
    return columns


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
