"""Load a core_exp results folder into SampleColumns: plan, read (cache or parse), collect, count."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from controller.core_exp.cache import CacheEntry, FileCache, FileStat, content_hash, default_cache_dir
from controller.core_exp.discover import (
    RANK_FILE_RE,
    check_results_dir,
    dataset_folders,
    layout_hint,
    result_files,
    top_level_jsonl,
)
from controller.core_exp.parse import parse_file
from controller.core_exp.records import ROW_DTYPE, columns_from_rows, count_drop, position_keys
from controller.datasets import normalize_dataset_name
from controller.errors import DataLoadError, UnknownDatasetError
from controller.progress import ProgressBar, progress_enabled
from controller.samples import SampleColumns


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


@dataclass(frozen=True)
class _Unit:
    """Files whose records form one config's sequence (one file, or rank files in rank order)."""

    files: tuple[Path, ...]
    dataset: str | None


def _plan_folder(folder: Path, dataset: str, report: LoadReport, strict: bool) -> list[_Unit]:
    files = result_files(folder)
    names = {p.name for p in files}
    units: list[_Unit] = []
    rank_groups: dict[str, list[tuple[int, Path]]] = {}
    for p in files:
        m = RANK_FILE_RE.match(p.name)
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
    root = check_results_dir(results_dir)
    report = LoadReport(results_dir=str(root))
    cache = (
        FileCache(default_cache_dir() if cache_dir is None else cache_dir, ROW_DTYPE) if use_cache else None
    )

    folders = dataset_folders(root)
    top_units = [_Unit((p,), None) for p in top_level_jsonl(root)]

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
            + (f" (dropped: {report.dropped})" if report.dropped else "")
            + ("" if found else f": no dataset folder with result files; {layout_hint(root)}"),
        )
    columns = columns_from_rows(rows, np.concatenate(part_ds), np.concatenate(part_keys))
    return LoadResult(SampleColumns(names, {k: np.ascontiguousarray(v) for k, v in columns.items()}), report)


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
            count_drop(report.dropped, reason, n)
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
