"""Load core_exp profiling results (per-config JSON, older `summary` layout, JSONL) into SampleColumns."""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pydantic_core

from controller.errors import DataLoadError, UnknownDatasetError
from controller.file_cache import CacheEntry, FileCache, FileStat, content_hash, default_cache_dir
from controller.knobs import TIERS
from controller.progress import ProgressBar, progress_enabled
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
RESULT_SUFFIXES: tuple[str, ...] = (".json", ".jsonl")
_RANK_RE = re.compile(r"^(?P<base>.+)_rank(?P<rank>\d+)\.json$")
_CONFIG_NAME_MARK = "_imgsizetier-"
_HEAD_BYTES = 256 * 1024
_KNOB_MAX = np.iinfo(np.int16).max

# Drop reasons (LoadReport.dropped keys).
DROP_INVALID_RECORD = "record is not an object"
DROP_MISSING_KNOBS = "missing knobs"
DROP_INVALID_KNOBS = "invalid knobs"
DROP_MISSING_ACCURACY = "missing accuracy"
DROP_NONFINITE_ACCURACY = "non-finite accuracy"
DROP_MISSING_DATASET = "missing dataset"
DROP_UNREADABLE_LINE = "unreadable JSONL line"


def normalize_dataset_name(name: str) -> str:
    """`coco-2014-vqa` and `coco_2014_vqa` both name the dataset `coco_2014_vqa`."""
    return name.strip().replace("-", "_")


@dataclass
class LoadReport:
    results_dir: str
    datasets: list[str] = field(default_factory=list)
    files_parsed: int = 0
    files_from_cache: int = 0
    files_skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    dropped: dict[str, int] = field(default_factory=dict)  # reason -> samples dropped
    samples_kept: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "results_dir": self.results_dir,
            "datasets": list(self.datasets),
            "files_parsed": self.files_parsed,
            "files_from_cache": self.files_from_cache,
            "files_skipped": [{"path": p, "reason": r} for p, r in self.files_skipped],
            "dropped": dict(self.dropped),
            "samples_kept": self.samples_kept,
        }

    def summary_lines(self) -> list[str]:
        lines = [
            f"loaded {self.samples_kept} samples of {len(self.datasets)} dataset(s) "
            f"({', '.join(self.datasets) or 'none'}) from {self.results_dir}",
            f"files: {self.files_parsed} parsed, {self.files_from_cache} from cache, "
            f"{len(self.files_skipped)} skipped",
        ]
        for reason, n in sorted(self.dropped.items()):
            lines.append(f"dropped {n} samples: {reason}")
        for path, reason in self.files_skipped:
            lines.append(f"skipped {path}: {reason}")
        return lines


@dataclass(frozen=True)
class LoadResult:
    samples: SampleColumns
    report: LoadReport


# ---------------------------------------------------------------------------------------------------
# Parsing one file


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


def _count(dropped: dict[str, int], reason: str, n: int = 1) -> None:
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

    # Latencies (see module docs of the format): T_total from parts when 0, prefill falls back to T_total.
    total = np.where(tot_raw == 0, vis + pre + dec, tot_raw)
    prefill = vis + pre
    prefill = np.where((vis == 0) & (pre == 0), tot_raw, prefill)
    with np.errstate(divide="ignore", invalid="ignore"):
        per_token = np.where((dec > 0) & (out_tok > 0), dec / out_tok, np.nan)
    per_token = np.where(np.isfinite(per_token), per_token, np.nan)

    # Keep mask and per-reason drops, first reason wins.
    keep = np.ones(n, dtype=bool)

    def drop(mask: npt.NDArray[np.bool_], reason: str) -> None:
        hit = mask & keep
        _count(dropped, reason, int(hit.sum()))
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
                _count(dropped, DROP_UNREADABLE_LINE)
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


# ---------------------------------------------------------------------------------------------------
# Discovery


def _looks_like_result(path: Path) -> bool:
    if path.suffix == ".json" and _CONFIG_NAME_MARK in path.name:
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(_HEAD_BYTES)
    except OSError:
        return False
    if path.suffix == ".json":
        return b'"per_sample_results"' in head
    first = next((ln for ln in head.split(b"\n") if ln.strip()), b"")
    return b'"accuracy"' in first


def _result_files(folder: Path) -> list[Path]:
    try:
        entries = sorted(folder.iterdir())
    except OSError:
        return []
    return [p for p in entries if p.suffix in RESULT_SUFFIXES and p.is_file()]


def _dataset_folders(results_dir: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for sub in sorted(p for p in results_dir.iterdir() if p.is_dir()):
        if any(_looks_like_result(f) for f in _result_files(sub)):
            found.setdefault(normalize_dataset_name(sub.name), sub)
    return found


def _top_jsonl(results_dir: Path) -> list[Path]:
    return sorted(p for p in results_dir.glob("*.jsonl") if p.is_file())


def _check_dir(results_dir: str | Path) -> Path:
    root = Path(results_dir)
    if not root.exists():
        raise DataLoadError(
            str(root), "results directory does not exist; pass the folder holding the dataset folders"
        )
    if not root.is_dir():
        raise DataLoadError(str(root), "is not a directory; pass the folder holding the dataset folders")
    return root


def discover_datasets(results_dir: str | Path) -> list[str]:
    """Normalized names of the datasets present: folders holding result files, plus top-level JSONL."""
    root = _check_dir(results_dir)
    names = set(_dataset_folders(root))
    for p in _top_jsonl(root):
        entry = parse_file(p, None, p.read_bytes())
        names.update(entry.meta["datasets"])
    return sorted(names)


# ---------------------------------------------------------------------------------------------------
# Loading


@dataclass(frozen=True)
class _Unit:
    """Files whose records form one config's sequence (one file, or rank files in rank order)."""

    files: tuple[Path, ...]
    dataset: str | None


def _plan_folder(folder: Path, dataset: str, report: LoadReport, strict: bool) -> list[_Unit]:
    files = _result_files(folder)
    names = {p.name for p in files}
    units: list[_Unit] = []
    rank_groups: dict[str, list[tuple[int, Path]]] = {}
    for p in files:
        m = _RANK_RE.match(p.name)
        if m is None:
            units.append(_Unit((p,), dataset))
            continue
        merged = m["base"] + ".json"
        if merged in names:
            reason = f"leftover rank file beside merged {merged}; its samples are in the merged file"
            if strict:
                raise DataLoadError(str(p), reason)
            report.files_skipped.append((str(p), reason))
            continue
        rank_groups.setdefault(m["base"], []).append((int(m["rank"]), p))
    for _, group in sorted(rank_groups.items()):
        units.append(_Unit(tuple(p for _, p in sorted(group)), dataset))
    return units


class _Reader:
    """Gets one file's entry from the cache or by parsing it, and keeps the counts."""

    def __init__(self, cache: FileCache | None, report: LoadReport, bar: ProgressBar) -> None:
        self.cache, self.report, self.bar = cache, report, bar

    def read(self, path: Path, dataset: str | None) -> CacheEntry:
        abspath = path.resolve()
        entry: CacheEntry | None = None
        stat = FileStat.of(abspath)
        if self.cache is not None:
            entry = self.cache.lookup(abspath, stat)
        if entry is not None:
            self.report.files_from_cache += 1
        else:
            raw = abspath.read_bytes()
            entry = parse_file(abspath, dataset, raw)
            self.report.files_parsed += 1
            if self.cache is not None:
                self.cache.store(abspath, FileStat(len(raw), stat.mtime_ns), content_hash(raw), entry)
            del raw
        self.bar.update(1, path.name)
        return entry


def _resolve_requested(requested: Iterable[str] | None, found: Sequence[str]) -> list[str]:
    if requested is None:
        return list(found)
    if isinstance(requested, str):
        requested = [requested]
    out: list[str] = []
    for name in requested:
        norm = normalize_dataset_name(name)
        if norm not in found:
            raise UnknownDatasetError(name, list(found))
        if norm not in out:
            out.append(norm)
    return out


def load_samples(
    results_dir: str | Path,
    *,
    datasets: Iterable[str] | None = None,
    strict: bool = False,
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
    progress: bool | None = None,
) -> LoadResult:
    """Stream every result file into columns; quirks are dropped and counted (or raise with strict)."""
    root = _check_dir(results_dir)
    report = LoadReport(results_dir=str(root))
    cache = (
        FileCache(default_cache_dir() if cache_dir is None else cache_dir, ROW_DTYPE) if use_cache else None
    )

    folders = _dataset_folders(root)
    top_units = [_Unit((p,), None) for p in _top_jsonl(root)]

    # Top-level JSONL first: its dataset names are only known once read.
    bar = ProgressBar(0, "files", enabled=progress_enabled(progress))
    reader = _Reader(cache, report, bar)
    loaded: list[tuple[_Unit, list[CacheEntry]]] = []
    for unit in top_units:
        loaded.append((unit, [reader.read(unit.files[0], None)]))
    found = sorted(set(folders) | {n for _, es in loaded for e in es for n in e.meta["datasets"]})
    selected = _resolve_requested(datasets, found)
    report.datasets = selected

    units: list[_Unit] = []
    for name in selected:
        if name in folders:
            units.extend(_plan_folder(folders[name], name, report, strict))
    bar.total = len(top_units) + sum(len(u.files) for u in units)

    names = tuple(selected)
    name_index = {n: i for i, n in enumerate(names)}
    parts: list[npt.NDArray[Any]] = []
    part_ds: list[npt.NDArray[np.int16]] = []
    part_keys: list[npt.NDArray[np.uint64]] = []
    try:
        for unit in units:
            entries = [reader.read(p, unit.dataset) for p in unit.files]
            _collect((unit, entries), name_index, report, strict, parts, part_ds, part_keys)
        # Top-level JSONL units were read first; collect them now that the selection is known.
        for item in loaded:
            _collect(item, name_index, report, strict, parts, part_ds, part_keys)
    finally:
        bar.close()
        if cache is not None:
            cache.save()

    rows = np.concatenate(parts) if parts else np.zeros(0, dtype=ROW_DTYPE)
    report.samples_kept = len(rows)
    if not len(rows):
        skipped = "; ".join(f"{p}: {r}" for p, r in report.files_skipped[:5])
        raise DataLoadError(
            str(root),
            "no usable samples found"
            + (f" (skipped: {skipped})" if skipped else "")
            + (f" (dropped: {report.dropped})" if report.dropped else ""),
        )
    columns = columns_from_rows(rows, np.concatenate(part_ds), np.concatenate(part_keys))
    return LoadResult(SampleColumns(names, {k: np.ascontiguousarray(v) for k, v in columns.items()}), report)


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


def _collect(
    item: tuple[_Unit, list[CacheEntry]],
    name_index: dict[str, int],
    report: LoadReport,
    strict: bool,
    parts: list[npt.NDArray[Any]],
    part_ds: list[npt.NDArray[np.int16]],
    part_keys: list[npt.NDArray[np.uint64]],
) -> None:
    unit, entries = item
    offset = 0
    for path, entry in zip(unit.files, entries, strict=True):
        meta = entry.meta
        if meta["skipped"] is not None:
            if strict:
                raise DataLoadError(str(path), meta["skipped"])
            report.files_skipped.append((str(path), meta["skipped"]))
            continue
        rows = entry.rows
        file_names: list[str] = meta["datasets"]
        if unit.dataset is None:  # top-level JSONL: keep the selected datasets' rows only
            wanted = np.array([n in name_index for n in file_names] or [False], dtype=bool)
            rows = rows[wanted[rows["ds"]]] if len(rows) else rows
        dropped: dict[str, int] = meta["dropped"]
        if strict and dropped:
            reason, n = next(iter(dropped.items()))
            raise DataLoadError(str(path), f"{n} sample(s) dropped: {reason}")
        for reason, n in dropped.items():
            _count(report.dropped, reason, n)
        if len(rows):
            remap = np.array([name_index.get(n, -1) for n in file_names], dtype=np.int16)
            ds = remap[rows["ds"]]
            keys = rows["qkey"].copy()
            no_q = ~rows["has_qkey"]
            if no_q.any():
                for local_i, name in enumerate(file_names):
                    sel = no_q & (rows["ds"] == local_i)
                    if sel.any():
                        keys[sel] = position_keys(name, rows["pos"][sel] + offset)
            parts.append(rows)
            part_ds.append(ds)
            part_keys.append(keys)
        offset += int(meta["records"])
