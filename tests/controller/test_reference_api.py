"""Code written against the reference design keeps working with `from controller import ...`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import controller
from controller import (
    ControllerError,
    LookupTableBaselineController,
    build_lookup_table_from_core_exp,
    create_lookup_table_controller,
)
from controller.core_exp.synthetic import generate_sample_results
from tests.controller.test_build import records
from tests.controller.test_table_file import reference_table_json

REFERENCE_KEYS = {"tier", "top_k", "num_active_blocks", "accuracy", "latency", "num_samples", "accuracy_std",
             "latency_std"}


@pytest.fixture(scope="module")
def results_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("core_exp")
    generate_sample_results(out, samples_per_config=10, seed=1)
    return out


def test_seed_workflow(results_dir: Path, tmp_path: Path) -> None:
    ctl = build_lookup_table_from_core_exp(
        results_dir=str(results_dir), dataset_names=["coco_2014_vqa", "text-vqa"],
        output_file=str(tmp_path / "ckpt" / "lookup_table_baseline.json"), aggregation_method="mean",
        tolerance=0.05, cache_dir=tmp_path / "cache", progress=False)
    config = ctl.predict(latency_budget=200.0)
    assert REFERENCE_KEYS <= set(config)
    assert isinstance(config["tier"], str) and isinstance(config["top_k"], int)
    assert isinstance(config["accuracy"], float) and isinstance(config["num_samples"], int)
    all_configs = ctl.predict(latency_budget=200.0, return_all_candidates=True)
    assert isinstance(all_configs, list) and all_configs[0]["accuracy"] == config["accuracy"]
    assert [c["accuracy"] for c in all_configs] == sorted((c["accuracy"] for c in all_configs), reverse=True)
    assert all(c["latency"] <= 200 * 1.05 for c in all_configs)
    stats = ctl.get_statistics()
    assert {"num_configs", "num_lookup_entries", "latency_range", "accuracy_range", "latency_stats",
            "config_distribution"} <= set(stats)
    assert stats["latency_range"]["min"] < stats["latency_range"]["max"]
    assert set(stats["config_distribution"]["tiers"]) == {"low", "medium", "high"}
    loaded = LookupTableBaselineController.load(str(tmp_path / "ckpt" / "lookup_table_baseline.json"))
    assert loaded.predict(200.0) == config
    assert loaded.config_table == ctl.config_table
    assert all(isinstance(k, tuple) and len(k) == 3 for k in loaded.config_table)
    lookup = loaded.lookup_table
    assert lookup and all(isinstance(b, float) for b in lookup)


def test_infeasible_budget_returns_closest_flagged(results_dir: Path) -> None:
    ctl = build_lookup_table_from_core_exp(str(results_dir), use_cache=False, progress=False)
    config = ctl.predict(1.0)
    assert config["feasible"] is False and config["latency"] == ctl.min_latency


def test_predict_is_the_resolved_decision_as_dict(results_dir: Path) -> None:
    ctl = build_lookup_table_from_core_exp(str(results_dir), use_cache=False, progress=False)
    for budget in (1.0, 120.0, 150.5, 200.0, 400, 150.5):
        for options in ({}, {"tolerance": 0.2}, {"dataset": "text-vqa"}):
            got = ctl.predict(budget, **options)
            want = ctl.table.resolve(budget, **options).to_dict()
            assert list(got.items()) == list(want.items())
    first, second = ctl.predict(200.0), ctl.predict(200.0)
    first["tier"] = "changed"
    assert second["tier"] != "changed"  # every call gets its own dict


def test_constructor_from_profiling_results() -> None:
    ctl = LookupTableBaselineController(records(90), aggregation_method="median", tolerance=0.1,
                                        use_prefill_only=False)
    assert ctl.aggregation_method == "median" and ctl.tolerance == 0.1 and not ctl.use_prefill_only
    assert ctl.predict(400)["feasible"]


def test_wrapper(tmp_path: Path, results_dir: Path) -> None:
    path = tmp_path / "seed.json"
    path.write_text(json.dumps(reference_table_json()))
    w = create_lookup_table_controller(lookup_table_path=str(path))
    assert w.predict_stage1(latency_budget=150.0) == {"tier": "medium"}
    assert w.predict_stage2(latency_budget=150.0) == {"top_k": 8, "num_active_blocks": 16}
    assert w.predict_all(200.0)["tier"] == "high"
    assert w.to("cuda").eval() is w and w.forward_stage1(None, None) == {}
    built = create_lookup_table_controller(results_dir=str(results_dir), use_cache=False, progress=False)
    assert REFERENCE_KEYS <= set(built.predict_all(180.0))
    with pytest.raises(ControllerError, match="lookup_table_path or results_dir"):
        create_lookup_table_controller()


def test_bad_inputs_raise_typed_errors() -> None:
    ctl = LookupTableBaselineController(records(30))
    with pytest.raises(ControllerError, match="NaN"):
        ctl.predict(float("nan"))
    with pytest.raises(ControllerError, match="aggregation_method"):
        LookupTableBaselineController(records(30), aggregation_method="mode")
    with pytest.raises(ControllerError, match="tolerance"):
        LookupTableBaselineController(records(30), tolerance=-1)


def test_public_api_and_purity() -> None:
    for name in ("LookupTableBaselineController", "build_lookup_table_from_core_exp",
                 "create_lookup_table_controller", "Table", "load_table", "build_table"):
        assert name in controller.__all__
    # Importing the library pulls in neither ray nor torch, and configures no logging.
    code = ("import sys, logging, controller, lookupctl; "
            "assert 'ray' not in sys.modules and 'torch' not in sys.modules; "
            "assert not logging.getLogger().handlers")
    subprocess.run([sys.executable, "-c", code], check=True)
