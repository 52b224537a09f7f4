"""The SYNTHETIC sample generator and `lookupctl sample-data`, on real files in tmp_path."""

from __future__ import annotations

import argparse
import json
import math
import re
import shlex
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import lookupctl as cli
from controller.core_exp.synthetic import generate_sample_results
from controller.core_exp.write import config_filename
from controller.datasets import dataset_folder
from controller.errors import ControllerError
from lookupctl import sample_data as cli_sample_data

REPO = Path(__file__).resolve().parents[3]
SMALL: dict[str, Any] = {
    "tiers": ("low", "high"),
    "top_ks": (4, 8),
    "blocks": (12, 16),
    "samples_per_config": 30,
}


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def loaded(root: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(root.glob("*/*.json"))]


@pytest.fixture(scope="module")
def full(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("full")
    generate_sample_results(out, samples_per_config=100)
    return out


def test_files_follow_naming_and_aggregates_match_samples(full: Path) -> None:
    assert sorted(p.name for p in full.iterdir()) == ["coco-2014-vqa", "okvqa", "text-vqa"]
    for path in sorted(full.glob("*/*.json")):
        data = json.loads(path.read_text())
        name = config_filename(path.parent.name.replace("-", "_"), data["tier"], data["selected_crops_mean"],
                               data["top_k"], data["num_active_blocks"])  # fmt: skip
        assert path.name == name
        recs = data["per_sample_results"]
        assert data["num_samples"] == len(recs) == 100
        assert data["accuracy"] == pytest.approx(np.mean([r["accuracy"] for r in recs]))
        assert data["latency_stats"]["T_total_p95"] == pytest.approx(
            np.percentile([r["T_total"] for r in recs], 95)
        )
        assert data["selected_crops_mean"] == pytest.approx(np.mean([r["actual_num_crops"] for r in recs]))
        assert all(r["tier"] == data["tier"] and r["top_k"] == data["top_k"] for r in recs)
        lo, hi = data["tier_range"]["min_crops"], data["tier_range"]["max_crops"]
        assert all(lo <= r["actual_num_crops"] <= hi for r in recs)


def test_magnitudes_and_trade_off(full: Path) -> None:
    configs = loaded(full)
    assert len(configs) == 3 * 27
    prefill = np.array(
        [r["T_vision_total"] + r["T_LLM_prefill"] for c in configs for r in c["per_sample_results"]]
    )
    assert (
        60 < prefill.min() < 95 and 100 < np.median(prefill) < 170 and 150 < np.percentile(prefill, 95) < 200
    )
    totals = [c["latency_stats"]["T_total_mean"] for c in configs]
    assert 150 < min(totals) and max(totals) < 380
    accs = [c["accuracy"] for c in configs]
    assert 0.3 < min(accs) and max(accs) < 0.87
    per_token = [r["T_decode_per_token"] for c in configs for r in c["per_sample_results"]]
    assert 20 < np.median(per_token) < 50
    scores = {r["accuracy"] for c in configs for r in c["per_sample_results"]}
    assert scores <= {0.0, 0.3, 0.6, 0.9, 1.0}

    def mean_of(key: str, value: Any, field: str) -> float:
        sel = [c for c in configs if c[key] == value]
        return float(
            np.mean([c[field] if field == "accuracy" else c["latency_stats"]["T_total_mean"] for c in sel])
        )

    for key, lo, hi in (("tier", "low", "high"), ("top_k", 4, 8), ("num_active_blocks", 12, 16)):
        assert mean_of(key, lo, "accuracy") < mean_of(key, hi, "accuracy")
        assert mean_of(key, lo, "latency") < mean_of(key, hi, "latency")


def test_same_questions_in_every_config_of_a_dataset(full: Path) -> None:
    folder = full / "okvqa"
    orders = {tuple(r["metadata"]["question_id"] for r in json.loads(p.read_text())["per_sample_results"])
              for p in folder.glob("*.json")}  # fmt: skip
    assert len(orders) == 1
    (ids,) = orders
    assert len(set(ids)) == len(ids)  # question ids are unique; sample_id (rank-local) is not
    sample_ids = [r["sample_id"] for r in loaded(full)[0]["per_sample_results"]]
    assert len(set(sample_ids)) < len(sample_ids)


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path) -> None:
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        generate_sample_results(tmp_path / name, seed=seed, **SMALL)
    a, b, c = (files(tmp_path / n) for n in "abc")
    assert a == b and a != c


def test_quirks_are_exactly_what_the_summary_counts(tmp_path: Path) -> None:
    s = generate_sample_results(tmp_path, datasets=("text_vqa",), quirks=True, **SMALL)
    assert s.synthetic and s.describe().startswith("SYNTHETIC sample results")
    assert s.quirks_added == {
        "leftover_rank_files": 2, "log_files": 1, "nan_accuracy_samples": 2, "nan_latency_samples": 2,
        "non_result_files": 1, "old_layout_files": 1, "rank_only_configs": 1, "truncated_files": 1,
        "zero_latency_samples": 3,
    }  # fmt: skip
    folder = tmp_path / dataset_folder("text_vqa")
    # 4 plain configs, merged + 2 rank files, 2 rank-only files, truncated, old layout, log, README
    assert len(files(tmp_path)) == s.files_written == 4 + 3 + 2 + 1 + 1 + 1 + 1
    assert [p.name for p in (tmp_path / "logs").iterdir()][0].endswith(".log")
    assert (folder / "README.txt").exists()
    rank = sorted(p.name for p in folder.glob("*_rank*.json"))
    merged_of_rank = {re.sub(r"_rank\d\.json$", ".json", n) for n in rank}
    assert len(rank) == 4 and len(merged_of_rank) == 2
    assert sum((folder / m).exists() for m in merged_of_rank) == 1
    good, bad, old = [], [], []
    for p in folder.glob("*.json"):
        try:
            data = json.loads(p.read_text())
        except json.JSONDecodeError:
            bad.append(p)
            continue
        (old if "summary" in data else good).append(data)
    assert len(bad) == 1 and len(old) == 1
    assert set(old[0]["summary"][0]) >= {"tier", "top_k", "num_active_blocks"} and "tier" not in old[0]
    assert "top_k" not in old[0]["per_sample_results"][0]
    recs = [r for d in good + old for r in d["per_sample_results"]]
    assert sum(math.isnan(r["accuracy"]) for r in recs) == 2
    assert sum(math.isnan(r["T_LLM_prefill"]) for r in recs) == 2
    assert sum(r["T_total"] == 0 and r["T_LLM_prefill"] == 0 for r in recs) == 3
    # 8 configs: the truncated one is lost; the rank-only config counts once; leftover ranks duplicate 30
    assert s.samples == 7 * 30 and len(recs) == s.samples + 30


def test_bad_arguments_raise_named_errors(tmp_path: Path) -> None:
    with pytest.raises(ControllerError, match="samples_per_config=-1"):
        generate_sample_results(tmp_path, samples_per_config=-1)
    with pytest.raises(ControllerError, match="nope"):
        generate_sample_results(tmp_path, datasets=("nope",))
    with pytest.raises(ControllerError, match="quirks need"):
        generate_sample_results(tmp_path, tiers=("low",), top_ks=(4,), blocks=(12,), quirks=True)


def readme_command() -> list[str]:
    text = (REPO / "sample_results" / "README.md").read_text()
    (line,) = [ln for ln in text.splitlines() if ln.startswith("lookupctl sample-data")]
    return shlex.split(line)[1:]


def test_bundled_folder_equals_regeneration_with_documented_command(tmp_path: Path) -> None:
    argv = readme_command()
    bundled = REPO / argv[argv.index("--out") + 1]
    argv[argv.index("--out") + 1] = str(tmp_path)
    parser = argparse.ArgumentParser()
    cli_sample_data.register(parser.add_subparsers())
    args = parser.parse_args(argv)
    assert args.func(args) == 0
    assert files(tmp_path) == files(bundled)
    assert sum(len(b) for b in files(bundled).values()) < 4_500_000


def test_cli_prints_synthetic_summary_and_rejects_bad_values(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cli, "COMMAND_MODULES", ("lookupctl.sample_data",))
    argv = ["sample-data", "--out", str(tmp_path / "o"), "--datasets", "okvqa", "--samples-per-config", "5"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith("SYNTHETIC sample results") and len(list((tmp_path / "o").rglob("*.json"))) == 27
    assert cli.main(["sample-data", "--out", str(tmp_path / "x"), "--samples_per_config", "-3"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "samples_per_config=-3" in err
    assert not (tmp_path / "x").exists()
