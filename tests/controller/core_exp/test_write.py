"""The core_exp writer: names, keys, aggregates, NaN handling, atomic writes."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from controller.core_exp.write import config_filename, default_active_blocks, sample_record, write_config_file
from controller.datasets import dataset_folder
from controller.errors import KnobError

TOP_KEYS = {
    "tier", "tier_range", "max_crops", "selected_crops_distribution", "selected_crops_mean",
    "selected_crops_std", "target_vision_tokens_mean", "target_vision_tokens_std",
    "actual_vision_tokens_mean", "actual_vision_tokens_std", "top_k", "num_active_blocks",
    "num_total_blocks", "active_block_indices", "num_samples", "accuracy", "accuracy_std",
    "latency_stats", "per_sample_results",
}  # fmt: skip
RECORD_KEYS = {
    "sample_id", "tier", "tier_range", "top_k", "num_active_blocks", "accuracy", "T_vision_total",
    "T_LLM_prefill", "T_LLM_decode", "T_total", "T_decode_per_token", "T_decode_per_step",
    "output_tokens", "content_tokens", "ends_with_eos", "actual_num_crops", "actual_tiling",
    "actual_image_size", "target_vision_tokens", "actual_vision_tokens", "actual_text_tokens",
    "total_sequence_length", "pred", "metadata",
}  # fmt: skip
STAGES = ("T_vision_total", "T_LLM_prefill", "T_LLM_decode", "T_total", "T_decode_per_token")


def record(i: int, **over: Any) -> dict[str, Any]:
    rec = sample_record(
        sample_id=i, tier="medium", top_k=6, num_active_blocks=14, accuracy=[0.0, 0.6, 1.0][i % 3],
        T_vision_total=20.0 + i, T_LLM_prefill=100.0 + i, T_LLM_decode=60.0, T_total=182.0 + 2 * i,
        T_decode_per_step=[[31.0], [29.0]], output_tokens=2, content_tokens=1, ends_with_eos=True,
        actual_num_crops=4 + i % 3, actual_tiling=[2, 2], actual_image_size=[640, 480],
        actual_vision_tokens=700, actual_text_tokens=40, pred="yes", question_id=100 + i,
        answers=["yes"] * 10, image_id=7,
    )  # fmt: skip
    rec.update(over)
    return rec


def test_names_follow_the_format() -> None:
    assert dataset_folder("coco_2014_vqa") == "coco-2014-vqa"
    assert (
        config_filename("text_vqa", "high", 11.8, 8, 16)
        == "text-vqa_imgsizetier-high_crops11_topk8_blocks16.json"
    )
    assert (
        config_filename("okvqa", "low", math.nan, 4, 12) == "okvqa_imgsizetier-low_crops0_topk4_blocks12.json"
    )


def test_default_active_blocks_follows_molmoe_drop_order() -> None:
    assert default_active_blocks(16) == list(range(16))
    for kept, dropped in {15: {4}, 14: {4, 13}, 13: {4, 10, 13}, 12: {2, 4, 10, 13}}.items():
        assert default_active_blocks(kept) == [b for b in range(16) if b not in dropped]
    assert len(default_active_blocks(3, 4)) == 3 and default_active_blocks(1, 1) == [0]
    with pytest.raises(KnobError, match="num_active_blocks=17"):
        default_active_blocks(17)


def test_sample_record_has_every_key_and_derived_values() -> None:
    rec = record(1)
    assert set(rec) == RECORD_KEYS
    assert rec["T_decode_per_token"] == 30.0 and rec["total_sequence_length"] == 740
    assert rec["target_vision_tokens"] == (5 + 1) * 144
    assert rec["tier_range"] == {"min_crops": 4, "max_crops": 8}
    assert set(rec["metadata"]) == {"question_id", "answers", "image_id"}


def test_written_file_aggregates_equal_per_sample_values(tmp_path: Path) -> None:
    recs = [record(i) for i in range(6)]
    path = write_config_file(tmp_path, "coco_2014_vqa", tier="medium", top_k=6, num_active_blocks=14,
                             per_sample_results=recs)  # fmt: skip
    assert path == tmp_path / "coco-2014-vqa" / "coco-2014-vqa_imgsizetier-medium_crops5_topk6_blocks14.json"
    data = json.loads(path.read_text())
    assert set(data) == TOP_KEYS and data["per_sample_results"] == recs
    assert data["num_samples"] == 6 and data["max_crops"] == 8
    assert data["active_block_indices"] == default_active_blocks(14)
    assert data["accuracy"] == pytest.approx(sum(r["accuracy"] for r in recs) / 6)
    assert data["selected_crops_distribution"] == {"4": 2, "5": 2, "6": 2}
    stats = data["latency_stats"]
    assert {f"{s}_{q}" for s in STAGES for q in ("mean", "std", "p50", "p95", "p99")} <= set(stats)
    assert stats["T_total_mean"] == pytest.approx(187.0)
    assert stats["T_decode_per_step_stats"]["pos_0"]["count"] == 6
    assert not list(tmp_path.rglob("*.tmp"))


def test_nan_and_none_do_not_break_aggregates_and_stay_valid_json(tmp_path: Path) -> None:
    recs = [record(0, accuracy=math.nan, T_total=None), record(1), record(2, T_LLM_prefill=math.nan)]
    path = write_config_file(tmp_path, "okvqa", tier="medium", top_k=6, num_active_blocks=14,
                             per_sample_results=recs, rank=1)  # fmt: skip
    assert path.name.endswith("_topk6_blocks14_rank1.json")
    assert "NaN" in path.read_text()
    data = json.loads(path.read_text())
    assert data["accuracy"] == pytest.approx(0.8)
    assert data["latency_stats"]["T_total_mean"] == pytest.approx(185.0)
    assert data["latency_stats"]["T_LLM_prefill_mean"] == pytest.approx(100.5)
    empty = write_config_file(
        tmp_path, "okvqa", tier="low", top_k=4, num_active_blocks=12, per_sample_results=[]
    )
    assert math.isnan(json.loads(empty.read_text())["accuracy"])
