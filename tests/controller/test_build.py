"""Building tables: the seed's aggregations exactly, quantiles, thin configs, drops, scopes,
recalibration, and a build from real files equal to a warm rebuild."""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from controller.build import build_table, build_table_from_results
from controller.core_exp.records import DROP_MISSING_KNOBS, DROP_NONFINITE_ACCURACY, records_to_samples
from controller.core_exp.synthetic import generate_sample_results
from controller.errors import BuildError
from controller.knobs import Knobs
from controller.params import BuildParams, make_build_params


def records(n: int = 60, seed: int = 3) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        tier = ["low", "medium", "high"][i % 3]
        k = [4, 8][(i // 3) % 2]
        out.append(
            {
                "dataset": ["text_vqa", "okvqa"][i % 2],
                "tier": tier,
                "top_k": k,
                "num_active_blocks": 16,
                "accuracy": float(rng.choice([0.0, 0.3, 0.6, 0.9, 1.0])),
                "T_vision_total": float(rng.uniform(20, 60)),
                "T_LLM_prefill": float(rng.uniform(50, 120)),
                "T_total": float(rng.uniform(160, 380)),
                "metadata": {"question_id": f"q{i % 10}"},
            }
        )
    return out


def seed_config_table(recs: list[dict], method: str, prefill: bool = True) -> dict:
    """The reference implementation's _build_config_table, restated."""
    groups: dict = defaultdict(list)
    for r in recs:
        lat = r["T_vision_total"] + r["T_LLM_prefill"] if prefill else r["T_total"]
        if lat <= 0:
            lat = r["T_total"]
        if lat <= 0:
            continue
        groups[(r["tier"], r["top_k"], r["num_active_blocks"])].append((r["accuracy"], lat))
    out = {}
    for key, s in groups.items():
        acc = [a for a, _ in s]
        lat = [x for _, x in s]
        if method == "mean":
            a, t = np.mean(acc), np.mean(lat)
        elif method == "median":
            a, t = np.median(acc), np.median(lat)
        else:
            b = int(np.argmax(acc))
            a, t = acc[b], lat[b]
        out[key] = {
            "accuracy": float(a),
            "latency": float(t),
            "num_samples": len(s),
            "accuracy_std": float(np.std(acc)),
            "latency_std": float(np.std(lat)),
        }
    return out


@pytest.mark.parametrize("method", ["mean", "median", "max_accuracy"])
@pytest.mark.parametrize("prefill", [True, False])
def test_aggregations_equal_the_seed(method: str, prefill: bool) -> None:
    recs = records()
    samples, dropped = records_to_samples(recs)
    assert dropped == {}
    table = build_table(
        samples, BuildParams(aggregation_method=method, latency_metric="prefill" if prefill else "total")
    )
    expected = seed_config_table(recs, method, prefill)
    got = {(c.knobs.tier, c.knobs.top_k, c.knobs.num_active_blocks): c.reference_dict() for c in table.configs()}
    assert got.keys() == expected.keys()
    for key in expected:
        for field, value in expected[key].items():
            assert got[key][field] == pytest.approx(value, rel=1e-12), (key, field)


def test_latency_quantile_replaces_the_budget_latency() -> None:
    samples, _ = records_to_samples(records(300))
    mean_t = build_table(samples, BuildParams())
    p95_t = build_table(samples, BuildParams(latency_quantile=0.95))
    for m, q in zip(mean_t.configs(), p95_t.configs()):
        assert q.latency_ms == pytest.approx(q.latency_p95) and q.latency_ms > m.latency_ms
        assert q.accuracy == m.accuracy


def test_distribution_fields() -> None:
    samples, _ = records_to_samples(records(300))
    c = build_table(samples).configs()[0]
    assert (
        c.latency_min <= c.latency_median <= c.latency_p90 <= c.latency_p95 <= c.latency_p99 <= c.latency_max
    )


def test_min_samples_excludes_thin_configs_and_reports_them() -> None:
    recs = records(60) + [{**records(1)[0], "tier": "high", "top_k": 6, "num_active_blocks": 12}]
    samples, _ = records_to_samples(recs)
    table = build_table(samples, BuildParams(min_samples=2))
    assert Knobs("high", 6, 12) not in {c.knobs for c in table.configs()}
    assert {
        "scope": "global",
        "tier": "high",
        "top_k": 6,
        "num_active_blocks": 12,
        "num_samples": 1,
    } in table.source["excluded_configs"]
    with pytest.raises(BuildError, match="min_samples=1000"):
        build_table(samples, BuildParams(min_samples=1000))


def test_bad_samples_are_dropped_and_counted_never_nan() -> None:
    recs = records(30)
    recs[0]["accuracy"] = math.nan
    recs[1].pop("top_k")
    recs[2]["T_vision_total"] = recs[2]["T_LLM_prefill"] = 0.0
    recs[2]["T_total"] = 0.0
    recs[3]["T_vision_total"] = math.nan
    recs[3]["T_LLM_prefill"] = math.nan
    recs[3]["T_total"] = math.nan
    samples, dropped = records_to_samples(recs)
    assert dropped == {DROP_NONFINITE_ACCURACY: 1, DROP_MISSING_KNOBS: 1}
    table = build_table(samples)
    assert table.source["dropped_at_build"] == {"nonpositive_latency": 1, "nonfinite_latency": 1}
    assert table.source["samples_used"] == 26
    assert all(math.isfinite(c.accuracy) and math.isfinite(c.latency_ms) for c in table.configs())


def test_prefill_falls_back_to_total() -> None:
    recs = records(3)
    for r in recs:
        r.pop("T_vision_total")
        r["T_LLM_prefill"] = 0.0
    samples, _ = records_to_samples(recs)
    assert samples["latency_prefill"].tolist() == [r["T_total"] for r in recs]


def test_per_dataset_scopes() -> None:
    samples, _ = records_to_samples(records(120))
    table = build_table(samples)
    assert table.scopes == ("global", "okvqa", "text_vqa")
    n = {s: sum(c.num_samples for c in table.configs(s)) for s in table.scopes}
    assert n["global"] == n["okvqa"] + n["text_vqa"] == 120


def test_no_usable_samples() -> None:
    samples, _ = records_to_samples(
        [{**records(1)[0], "T_total": 0.0, "T_vision_total": 0.0, "T_LLM_prefill": 0.0}]
    )
    with pytest.raises(BuildError, match="no usable samples"):
        build_table(samples)


def test_bad_params_name_the_field() -> None:
    with pytest.raises(BuildError, match="tolerance"):
        make_build_params(tolerance=2.0)
    with pytest.raises(BuildError, match="latency_quantile"):
        make_build_params(latency_quantile=1.5)


def test_recalibration_takes_latency_from_new_profile() -> None:
    old, _ = records_to_samples(records(120))
    new_recs = [
        {
            **r,
            "T_vision_total": r["T_vision_total"] / 2,
            "T_LLM_prefill": r["T_LLM_prefill"] / 2,
            "accuracy": 0.0,
        }
        for r in records(120)
        if r["tier"] != "high"
    ]
    new_recs.append({**new_recs[0], "tier": "high", "top_k": 5, "num_active_blocks": 13})
    new, _ = records_to_samples(new_recs)
    base = build_table(old)
    table = build_table(old, latency_from=new)
    by = {c.knobs: c for c in base.configs()}
    for c in table.configs():
        assert c.accuracy == by[c.knobs].accuracy  # accuracy kept
        assert c.latency_ms == pytest.approx(by[c.knobs].latency_ms / 2)  # latency from the new profile
    recal = table.source["recalibration"]
    assert {(m["tier"], m["top_k"]) for m in recal["missing_in_latency_source"]} == {("high", 4), ("high", 8)}
    assert [
        (m["tier"], m["top_k"]) for m in recal["missing_in_accuracy_source"] if m["scope"] == "global"
    ] == [("high", 5)]


def test_build_from_files_cold_equals_warm(tmp_path: Path) -> None:
    generate_sample_results(tmp_path / "r", samples_per_config=12, seed=5, quirks=True)
    kwargs = {"cache_dir": tmp_path / "cache", "progress": False}
    cold = build_table_from_results(tmp_path / "r", **kwargs)
    warm = build_table_from_results(tmp_path / "r", **kwargs)
    assert warm.load_report.files_parsed == 0 and warm.load_report.files_from_cache > 0
    for scope in cold.table.scopes:
        assert cold.table.configs(scope) == warm.table.configs(scope)
    nocache = build_table_from_results(tmp_path / "r", use_cache=False, progress=False)
    assert nocache.table.configs() == cold.table.configs()
    assert cold.table.source["results_dir"] == str(tmp_path / "r")
    assert all(math.isfinite(c.accuracy) for c in cold.table.configs())
