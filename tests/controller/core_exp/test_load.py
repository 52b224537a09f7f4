"""Loading core_exp results from real files in tmp_path: layouts, quirks, strict mode, keys."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from controller.build import build_table
from controller.core_exp.discover import discover_datasets
from controller.core_exp.load import LoadResult, load_samples
from controller.core_exp.records import (
    DROP_INVALID_KNOBS,
    DROP_INVALID_RECORD,
    DROP_MISSING_ACCURACY,
    DROP_MISSING_KNOBS,
    DROP_NONFINITE_ACCURACY,
)
from controller.datasets import dataset_folder, normalize_dataset_name
from controller.errors import DataLoadError, UnknownDatasetError
from controller.params import make_build_params
from controller.progress import ProgressBar, progress_enabled


def record(i: int, tier: str = "low", top_k: int = 8, blocks: int = 16, **over: Any) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "sample_id": i % 2,  # rank-local: not unique
        "tier": tier,
        "top_k": top_k,
        "num_active_blocks": blocks,
        "accuracy": [0.0, 0.3, 0.6, 1.0][i % 4],
        "T_vision_total": 50.0 + i,
        "T_LLM_prefill": 80.0 + i,
        "T_LLM_decode": 100.0,
        "T_total": 240.0 + i,
        "T_decode_per_token": 30.0,
        "T_decode_per_step": [[30.0, 31.0], [29.5, 30.5]],
        "pred": "a cat",
        "metadata": {"question_id": 1000 + i, "answers": ["cat"]},
    }
    rec.update(over)
    return rec


def config_file(records: list[Any], tier: str = "low", top_k: int = 8, blocks: int = 16) -> dict[str, Any]:
    return {
        "tier": tier,
        "top_k": top_k,
        "num_active_blocks": blocks,
        "num_samples": len(records),
        "accuracy": 0.5,
        "latency_stats": {"T_total_mean": 250.0},
        "per_sample_results": records,
    }


def write(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    # json.dumps writes NaN literally, as the real profiler does.
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


def cfg_path(root: Path, folder: str, tier: str, k: int, n: int, suffix: str = "") -> Path:
    return root / folder / f"{folder}_imgsizetier-{tier}_crops2_topk{k}_blocks{n}{suffix}.json"


def write_config(
    root: Path, folder: str, tier: str, k: int, n: int, recs: list[Any], suffix: str = ""
) -> Path:
    return write(cfg_path(root, folder, tier, k, n, suffix), config_file(recs, tier, k, n))


def load(root: Path, **kw: Any) -> LoadResult:
    kw.setdefault("use_cache", False)
    return load_samples(root, **kw)


@pytest.fixture
def results(tmp_path: Path) -> Path:
    root = tmp_path / "results"
    for folder in ("coco-2014-vqa", "text-vqa"):
        for tier, k, n in (("low", 8, 16), ("high", 4, 12)):
            write_config(root, folder, tier, k, n, [record(i, tier, k, n) for i in range(4)])
    write(root / "logs" / "run_0.json", {"event": "started"})
    write(root / "logs" / "run_0.log", "log line")
    write(root / "README.txt", "not results")
    return root


def test_dataset_names_normalize() -> None:
    assert normalize_dataset_name("coco-2014-vqa") == "coco_2014_vqa"
    assert normalize_dataset_name("coco_2014_vqa") == "coco_2014_vqa"
    assert normalize_dataset_name(" COCO-2014-VQA ") == "coco_2014_vqa"
    assert dataset_folder("Coco_2014_VQA") == "coco-2014-vqa"


def test_discover_ignores_logs_and_other_folders(results: Path) -> None:
    (results / "empty").mkdir()
    assert discover_datasets(results) == ["coco_2014_vqa", "text_vqa"]


def test_basic_load_columns(results: Path) -> None:
    res = load(results)
    s = res.samples
    assert s.datasets == ("coco_2014_vqa", "text_vqa")
    assert len(s) == 16 and res.report.samples_kept == 16
    assert res.report.files_parsed == 4 and res.report.files_skipped == [] and res.report.dropped == {}
    assert sorted(set(s.tier_names())) == ["high", "low"]
    assert set(s["top_k"].tolist()) == {4, 8} and set(s["num_active_blocks"].tolist()) == {12, 16}
    assert s["key_from_metadata"].all()
    first = s["dataset"] == 0
    np.testing.assert_allclose(np.sort(s["latency_prefill"][first])[:2], [130.0, 130.0])
    assert np.isfinite(s["accuracy"]).all()


def test_sample_key_equal_across_configs_and_distinct_across_datasets(results: Path) -> None:
    s = load(results).samples
    for d in (0, 1):
        per_cfg = [sorted(s["sample_key"][(s["dataset"] == d) & (s["top_k"] == k)].tolist()) for k in (4, 8)]
        assert per_cfg[0] == per_cfg[1] and len(set(per_cfg[0])) == 4
    keys0 = set(s["sample_key"][s["dataset"] == 0].tolist())
    keys1 = set(s["sample_key"][s["dataset"] == 1].tolist())
    assert not keys0 & keys1


def test_question_id_fallback_keys_and_position_keys(tmp_path: Path) -> None:
    recs_a = [record(0, metadata={"qid": "q0"}), record(1, metadata={"id": 7}), record(2, metadata={})]
    recs_b = [record(0, metadata={"qid": "q0"}), record(1, metadata={"example_id": 7}), record(2)]
    del recs_b[2]["metadata"]
    write_config(tmp_path, "okvqa", "low", 8, 16, recs_a)
    write_config(tmp_path, "okvqa", "low", 4, 16, recs_b)
    s = load(tmp_path).samples
    assert s["key_from_metadata"].tolist() == [True, True, False, True, True, False]
    keys = s["sample_key"].tolist()
    k4, k8 = keys[:3], keys[3:]  # files sorted by name: topk4 before topk8
    assert k4 == k8 and len(set(k4)) == 3


def test_dataset_selection_both_spellings(results: Path) -> None:
    for name in ("coco_2014_vqa", "coco-2014-vqa"):
        res = load(results, datasets=[name])
        assert res.samples.datasets == ("coco_2014_vqa",) and len(res.samples) == 8
        assert res.report.datasets == ["coco_2014_vqa"]


def test_unknown_dataset_lists_found(results: Path) -> None:
    with pytest.raises(UnknownDatasetError) as e:
        load(results, datasets=["okvqa"])
    assert "coco_2014_vqa" in str(e.value) and "text_vqa" in str(e.value)
    assert e.value.available == ["coco_2014_vqa", "text_vqa"]


def test_missing_dir_and_no_usable_samples(tmp_path: Path) -> None:
    with pytest.raises(DataLoadError, match="does not exist") as e:
        load(tmp_path / "nope")
    assert str(tmp_path / "nope") in str(e.value)
    write_config(tmp_path, "okvqa", "low", 8, 16, [record(0, accuracy=float("nan"))])
    with pytest.raises(DataLoadError, match="no usable samples") as e2:
        load(tmp_path)
    assert e2.value.path == str(tmp_path)


def test_latency_rules(tmp_path: Path) -> None:
    recs = [
        record(0),  # 50 + 80
        record(1, T_vision_total=0.0, T_LLM_prefill=0.0),  # fallback to T_total
        record(2, T_total=0.0),  # total from parts
        record(3, T_vision_total=0.0, T_LLM_prefill=0.0, T_total=0.0),  # failed timing: zero, dropped at build
        record(4, T_vision_total=float("nan")),  # NaN latency kept, not counted
        record(5, T_LLM_prefill=None),  # null counts as missing
    ]
    del recs[1]["T_vision_total"]
    write_config(tmp_path, "okvqa", "low", 8, 16, recs)
    res = load(tmp_path)
    s = res.samples
    assert res.report.dropped == {} and len(s) == 6
    pre, tot = s["latency_prefill"], s["latency_total"]
    assert pre[0] == 130.0 and tot[0] == 240.0
    assert pre[1] == 241.0 and tot[1] == 241.0
    assert pre[2] == 134.0 and tot[2] == 52.0 + 82.0 + 100.0
    # Not a decode-only T_total (the reference kept 100.0 here): zero, so the build drops it for
    # either metric, as the reference README says zero-latency samples are.
    assert pre[3] == 0.0 and tot[3] == 0.0
    table = build_table(s, make_build_params(latency_metric="total", min_samples=1))
    assert table.source["dropped_at_build"] == {"nonpositive_latency": 1}
    assert math.isnan(pre[4]) and tot[4] == 244.0
    assert pre[5] == 55.0


def test_quirks_dropped_and_counted(tmp_path: Path) -> None:
    recs: list[Any] = [
        record(0),
        record(1, accuracy=float("nan")),
        record(2, accuracy=float("inf")),
        record(3, accuracy=None),
        record(4, tier="ultra"),
        record(5, top_k=8.5),
        record(6, num_active_blocks="16"),
        record(7, top_k=True),
        "not a record",
        record(9, top_k=8.0),  # integral float accepted
    ]
    del recs[3]["accuracy"]
    r10 = record(10)
    del r10["tier"]
    recs.append(r10)
    write_config(tmp_path, "okvqa", "low", 8, 16, recs)
    write(tmp_path / "okvqa" / "okvqa_imgsizetier-low_crops2_topk4_blocks16.json", '{"tier": "low", "per_sa')
    write(tmp_path / "okvqa" / "notes.json", {"comment": "not results"})
    res = load(tmp_path)
    s, rep = res.samples, res.report
    assert len(s) == 3 and np.isfinite(s["accuracy"]).all()
    assert rep.dropped == {
        DROP_NONFINITE_ACCURACY: 2,
        DROP_MISSING_ACCURACY: 1,
        DROP_INVALID_KNOBS: 4,
        DROP_INVALID_RECORD: 1,
    }
    assert s["top_k"].tolist() == [8, 8, 8]  # 8.0 accepted; the record without tier took the file's
    skipped = dict(rep.files_skipped)
    trunc = str(tmp_path / "okvqa" / "okvqa_imgsizetier-low_crops2_topk4_blocks16.json")
    assert "unreadable JSON" in skipped[trunc]
    assert "no per_sample_results" in skipped[str(tmp_path / "okvqa" / "notes.json")]
    lines = "\n".join(rep.summary_lines())
    assert "dropped 2 samples: non-finite accuracy" in lines and trunc in lines
    assert rep.to_dict()["files_skipped"][0]["reason"]


def test_record_without_knobs_uses_file_level_else_counts_missing(tmp_path: Path) -> None:
    r = record(0)
    for k in ("tier", "top_k", "num_active_blocks"):
        del r[k]
    write_config(tmp_path, "okvqa", "high", 6, 14, [r, record(1, "medium", 5, 13)])
    s = load(tmp_path).samples
    assert s.tier_names() == ["high", "medium"] and s["top_k"].tolist() == [6, 5]
    data = config_file([dict(r), record(1)])
    del data["tier"]
    write(tmp_path / "okvqa" / "okvqa_imgsizetier-high_crops2_topk6_blocks14.json", data)
    rep = load(tmp_path).report
    assert rep.dropped == {DROP_MISSING_KNOBS: 1}


def test_nan_literal_in_real_file(tmp_path: Path) -> None:
    path = write_config(tmp_path, "okvqa", "low", 8, 16, [record(0), record(1)])
    text = (
        path.read_text()
        .replace('"accuracy": 0.3', '"accuracy": NaN')
        .replace('"T_total": 240.0', '"T_total": NaN')
    )
    path.write_text(text)
    res = load(tmp_path)
    assert len(res.samples) == 1 and res.report.dropped == {DROP_NONFINITE_ACCURACY: 1}
    assert math.isnan(res.samples["latency_total"][0])


def test_older_summary_layout(tmp_path: Path) -> None:
    recs = [record(i) for i in range(3)]
    for r in recs:
        for k in ("tier", "top_k", "num_active_blocks"):
            del r[k]
    data = {"summary": [{"tier": "medium", "top_k": 7, "num_active_blocks": 15, "accuracy": 0.5}]}
    data["per_sample_results"] = recs
    write(tmp_path / "text-vqa" / "text-vqa_old.json", data)
    s = load(tmp_path).samples
    assert s.tier_names() == ["medium"] * 3 and set(s["top_k"].tolist()) == {7}
    assert set(s["num_active_blocks"].tolist()) == {15}


def test_leftover_rank_files_never_double_counted(tmp_path: Path) -> None:
    recs = [record(i) for i in range(4)]
    write_config(tmp_path, "okvqa", "low", 8, 16, recs)
    write_config(tmp_path, "okvqa", "low", 8, 16, recs[:2], suffix="_rank0")
    write_config(tmp_path, "okvqa", "low", 8, 16, recs[2:], suffix="_rank1")
    res = load(tmp_path)
    assert len(res.samples) == 4 and res.report.files_parsed == 1
    reasons = [r for _, r in res.report.files_skipped]
    assert len(reasons) == 2 and all("leftover rank file" in r for r in reasons)
    with pytest.raises(DataLoadError, match="leftover rank file") as e:
        load(tmp_path, strict=True)
    assert "_rank0.json" in e.value.path


def test_rank_only_config_merged_in_rank_order(tmp_path: Path) -> None:
    # No question ids: keys come from positions, so rank order decides them.
    recs = [record(i, metadata={}) for i in range(6)]
    write_config(tmp_path, "okvqa", "low", 8, 16, recs)
    low4 = [record(i, top_k=4, metadata={}) for i in range(6)]
    write_config(tmp_path, "okvqa", "low", 4, 16, low4[:2], suffix="_rank0")
    write_config(tmp_path, "okvqa", "low", 4, 16, low4[2:4], suffix="_rank2")
    write_config(tmp_path, "okvqa", "low", 4, 16, low4[4:], suffix="_rank10")
    res = load(tmp_path)
    s = res.samples
    assert res.report.files_skipped == [] and len(s) == 12
    k4 = s["top_k"] == 4
    assert s["sample_key"][k4].tolist() == s["sample_key"][~k4].tolist()
    assert s["latency_total"][k4].tolist() == [240.0 + i for i in range(6)]
    assert not s["key_from_metadata"].any()


def test_jsonl_top_level_with_dataset_key(tmp_path: Path) -> None:
    lines = [json.dumps(record(i, dataset="doc-qa")) for i in range(3)]
    lines += [json.dumps(record(i, "high", 4, 12, dataset="st_qa")) for i in range(2)]
    lines += [json.dumps(record(9)), "{truncated", ""]
    (tmp_path / "other_profiler.jsonl").write_text("\n".join(lines))
    assert discover_datasets(tmp_path) == ["doc_qa", "st_qa"]
    res = load(tmp_path)
    assert res.samples.datasets == ("doc_qa", "st_qa") and len(res.samples) == 5
    assert res.report.dropped == {"missing dataset": 1, "unreadable JSONL line": 1}
    only = load(tmp_path, datasets=["st-qa"])
    assert only.samples.datasets == ("st_qa",) and len(only.samples) == 2
    assert only.samples["dataset"].tolist() == [0, 0]


def test_jsonl_in_dataset_folder(tmp_path: Path) -> None:
    lines = [json.dumps(record(i, "medium", 6, 14)) for i in range(3)]
    write(tmp_path / "tally-qa" / "run.jsonl", "\n".join(lines) + "\n")
    write_config(tmp_path, "tally-qa", "medium", 6, 12, [record(i, "medium", 6, 12) for i in range(3)])
    s = load(tmp_path).samples
    assert s.datasets == ("tally_qa",) and len(s) == 6
    assert sorted(s["sample_key"][s["num_active_blocks"] == 14].tolist()) == sorted(
        s["sample_key"][s["num_active_blocks"] == 12].tolist()
    )


@pytest.mark.parametrize(
    "quirk, reason",
    [
        ("nan_accuracy", "non-finite accuracy"),
        ("bad_tier", "invalid knobs"),
        ("truncated", "unreadable JSON"),
        ("non_result", "no per_sample_results"),
    ],
)
def test_strict_names_file_and_reason(tmp_path: Path, quirk: str, reason: str) -> None:
    write_config(tmp_path, "okvqa", "low", 8, 16, [record(0)])
    bad = cfg_path(tmp_path, "okvqa", "low", 4, 16)
    if quirk == "nan_accuracy":
        write(bad, config_file([record(0, accuracy=float("nan"))]))
    elif quirk == "bad_tier":
        write(bad, config_file([record(0, tier="huge")]))
    elif quirk == "truncated":
        write(bad, json.dumps(config_file([record(0)]))[:50])
    else:
        write(bad, {"hello": 1})
    assert len(load(tmp_path).samples) >= 1
    with pytest.raises(DataLoadError, match=reason) as e:
        load(tmp_path, strict=True)
    assert e.value.path == str(bad)


def test_progress_bar_forced_and_auto() -> None:
    buf = io.StringIO()
    assert progress_enabled(None, buf) is False and progress_enabled(True, buf) is True
    with ProgressBar(4, "files", stream=buf, min_interval_s=0.0) as bar:
        for _ in range(4):
            bar.update(1, "x.json")
    assert "4/4 files" in buf.getvalue() and buf.getvalue().endswith("\n")
    quiet = io.StringIO()
    with ProgressBar(4, enabled=False, stream=quiet) as bar:
        bar.update(4)
    assert quiet.getvalue() == ""


def test_load_draws_progress_on_stderr_when_forced(results: Path, capsys: pytest.CaptureFixture[str]) -> None:
    load(results, progress=True)
    assert "4/4 files" in capsys.readouterr().err
    load(results, progress=False)
    assert capsys.readouterr().err == ""


def test_generated_quirky_results(tmp_path: Path) -> None:
    from controller.core_exp.synthetic import generate_sample_results

    summary = generate_sample_results(tmp_path, samples_per_config=20, seed=3, quirks=True)
    res = load(tmp_path)
    s, rep = res.samples, res.report
    assert s.datasets == ("coco_2014_vqa", "okvqa", "text_vqa")
    assert rep.dropped == {DROP_NONFINITE_ACCURACY: summary.quirks_added["nan_accuracy_samples"]}
    assert rep.samples_kept == summary.samples - summary.quirks_added["nan_accuracy_samples"]
    assert np.isfinite(s["accuracy"]).all() and s["key_from_metadata"].all()
    reasons = [r for _, r in rep.files_skipped]
    assert sum("leftover rank file" in r for r in reasons) == summary.quirks_added["leftover_rank_files"]
    assert sum("unreadable JSON" in r for r in reasons) == summary.quirks_added["truncated_files"]
    assert (
        len(reasons) == summary.quirks_added["leftover_rank_files"] + summary.quirks_added["truncated_files"]
    )
    assert (s["latency_total"] == 0).sum() == summary.quirks_added["zero_latency_samples"]
    assert np.isnan(s["latency_prefill"]).sum() == summary.quirks_added["nan_latency_samples"]
    # Every config holds the same questions.
    for d in range(3):
        in_d = s["dataset"] == d
        per_cfg: dict[tuple[int, int, int], set[int]] = {}
        for t, k, n, key in zip(
            s["tier"][in_d],
            s["top_k"][in_d],
            s["num_active_blocks"][in_d],
            s["sample_key"][in_d],
            strict=True,
        ):
            per_cfg.setdefault((int(t), int(k), int(n)), set()).add(int(key))
        assert len({frozenset(v) for v in per_cfg.values() if len(v) == 20}) == 1


def test_unhashable_question_id_still_keys(tmp_path: Path) -> None:
    for k in (4, 8):
        write_config(
            tmp_path, "okvqa", "low", k, 16, [record(0, top_k=k, metadata={"question_id": ["a", 1]})]
        )
    s = load(tmp_path).samples
    assert s["key_from_metadata"].all() and s["sample_key"][0] == s["sample_key"][1]
