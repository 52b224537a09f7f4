"""The per-file parse cache: warm equals cold, changed files re-parsed, corrupt entries rebuilt."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from controller.core_exp.cache import CACHE_FORMAT_VERSION, INDEX_NAME, default_cache_dir
from controller.core_exp.load import LoadResult, load_samples
from controller.samples import COLUMNS


def _record(i: int, acc: float = 0.6) -> dict[str, Any]:
    return {
        "tier": "medium",
        "top_k": 6,
        "num_active_blocks": 14,
        "accuracy": acc,
        "T_vision_total": 40.0 + i,
        "T_LLM_prefill": 90.0,
        "T_LLM_decode": 120.0,
        "T_total": 250.0 + i,
        "T_decode_per_step": [[30.0]],
        "metadata": {"question_id": f"q{i}"} if i % 3 else {},
    }


def _write(path: Path, recs: list[dict[str, Any]], k: int = 6) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    for r in recs:
        r["top_k"] = k
    data = {"tier": "medium", "top_k": k, "num_active_blocks": 14, "per_sample_results": recs}
    path.write_text(json.dumps(data))
    return path


@pytest.fixture
def results(tmp_path: Path) -> Path:
    root = tmp_path / "results"
    for ds in ("okvqa", "text-vqa"):
        for k in (4, 6, 8):
            _write(
                root / ds / f"{ds}_imgsizetier-medium_crops5_topk{k}_blocks14.json",
                [_record(i) for i in range(5)],
                k,
            )
        _write(
            root / ds / f"{ds}_imgsizetier-low_crops2_topk4_blocks12_rank0.json",
            [_record(i) for i in range(2)],
            5,
        )
        _write(
            root / ds / f"{ds}_imgsizetier-low_crops2_topk4_blocks12_rank1.json",
            [_record(i) for i in range(2, 4)],
            5,
        )
    (root / "okvqa" / "broken.json").write_text('{"per_sample_results": [')
    return root


def _load(root: Path, cache: Path) -> LoadResult:
    return load_samples(root, cache_dir=cache, progress=False)


def _assert_same(a: LoadResult, b: LoadResult) -> None:
    assert a.samples.datasets == b.samples.datasets
    for name in COLUMNS:
        assert a.samples[name].dtype == b.samples[name].dtype
        # NaN marks unknown values (decode_ms_per_token): equal when both sides have it.
        assert np.array_equal(a.samples[name], b.samples[name], equal_nan=a.samples[name].dtype.kind == "f"), name
    assert a.report.dropped == b.report.dropped and a.report.files_skipped == b.report.files_skipped


def test_warm_equals_cold_and_parses_nothing(results: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    uncached = load_samples(results, use_cache=False)
    cold = _load(results, cache)
    assert cold.report.files_parsed == 11 and cold.report.files_from_cache == 0
    warm = _load(results, cache)
    assert warm.report.files_parsed == 0 and warm.report.files_from_cache == 11
    _assert_same(cold, warm)
    _assert_same(uncached, warm)
    assert any(p.endswith("broken.json") for p, _ in warm.report.files_skipped)


def test_changed_file_is_reparsed(results: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    _load(results, cache)
    path = results / "okvqa" / "okvqa_imgsizetier-medium_crops5_topk8_blocks14.json"
    st = path.stat()
    _write(path, [_record(i, acc=1.0) for i in range(5)], 8)  # same size, new content
    assert path.stat().st_size == st.st_size
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    warm = _load(results, cache)
    assert warm.report.files_parsed == 1 and warm.report.files_from_cache == 10
    _assert_same(warm, load_samples(results, use_cache=False))
    s = warm.samples
    assert (s["accuracy"][(s["dataset"] == 0) & (s["top_k"] == 8)] == 1.0).all()


def test_touched_unchanged_file_is_not_reparsed(results: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cold = _load(results, cache)
    path = results / "text-vqa" / "text-vqa_imgsizetier-medium_crops5_topk4_blocks14.json"
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 5 * 10**9))
    warm = _load(results, cache)
    assert warm.report.files_parsed == 0
    _assert_same(cold, warm)
    # The new mtime is remembered: the next load takes the fast path.
    assert json.loads((cache / INDEX_NAME).read_text())["files"][str(path.resolve())]["mtime_ns"] == (
        st.st_mtime_ns + 5 * 10**9
    )


def test_corrupt_entry_is_rebuilt(results: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cold = _load(results, cache)
    entries = sorted(cache.glob("*.npy"))
    entries[0].write_bytes(b"garbage")
    entries[1].write_bytes(entries[1].read_bytes()[:100])
    warm = _load(results, cache)
    assert warm.report.files_parsed == 2
    _assert_same(cold, warm)
    assert _load(results, cache).report.files_parsed == 0


def test_corrupt_or_old_index_is_ignored(results: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cold = _load(results, cache)
    (cache / INDEX_NAME).write_text("{not json")
    assert _load(results, cache).report.files_parsed == 11
    index = json.loads((cache / INDEX_NAME).read_text())
    index["version"] = CACHE_FORMAT_VERSION + 100
    (cache / INDEX_NAME).write_text(json.dumps(index))
    again = _load(results, cache)
    assert again.report.files_parsed == 11
    _assert_same(cold, again)


def test_use_cache_false_writes_nothing(results: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    load_samples(results, cache_dir=cache, use_cache=False)
    assert not cache.exists()


def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LOOKUPCTL_CACHE_DIR", str(tmp_path / "explicit"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "explicit"
    monkeypatch.delenv("LOOKUPCTL_CACHE_DIR")
    assert default_cache_dir() == tmp_path / "xdg" / "lookupctl"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "lookupctl"
