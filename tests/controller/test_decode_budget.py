"""Decode statistics in the table (from core_exp T_LLM_decode / output_tokens) and whole-request budgets."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from controller import build_table_from_results
from controller.decode_budget import resolve_total
from controller.errors import BudgetError, TokenCountError
from controller.table import Table
from tests.controller.tables import stats, table_of

SAMPLES = Path(__file__).resolve().parents[2] / "sample_results" / "core_exp_synthetic"


def test_build_keeps_decode_ms_per_token_from_core_exp_files() -> None:
    table = build_table_from_results(SAMPLES, use_cache=False, progress=False).table
    configs = table.configs()
    assert all(c.decode_ms_per_token is not None and c.decode_ms_per_token > 0 for c in configs)
    # Expected value for one config, straight from its files: mean of T_LLM_decode / output_tokens.
    c = configs[0]
    rates = []
    for f in SAMPLES.glob("*/*.json"):
        raw = json.loads(f.read_text())
        if (raw.get("tier"), raw.get("top_k"), raw.get("num_active_blocks")) != (
            c.knobs.tier, c.knobs.top_k, c.knobs.num_active_blocks):
            continue
        for r in raw["per_sample_results"]:
            if r.get("T_LLM_decode") and r.get("output_tokens") and r.get("accuracy") is not None:
                rates.append(r["T_LLM_decode"] / r["output_tokens"])
    assert rates
    assert c.decode_ms_per_token == pytest.approx(sum(rates) / len(rates), rel=0.02)


def test_table_without_decode_stats_still_loads(tmp_path: Path) -> None:
    """A file written before the field existed: no decode key in any config record."""
    table = table_of([stats("low", 4, 12, 0.5, 80.0)])
    raw = table.to_json_dict()
    for scope in raw["scopes"].values():
        for c in scope["configs"]:
            c.pop("decode_ms_per_token")
    from controller.table_file import content_sha256

    raw["sha256"] = content_sha256(raw)
    path = tmp_path / "old.json"
    path.write_text(json.dumps(raw))
    loaded = Table.load(path)
    assert loaded.configs()[0].decode_ms_per_token is None


def test_decode_stats_round_trip_through_the_file(tmp_path: Path) -> None:
    table = table_of([replace(stats("low", 4, 12, 0.5, 80.0), decode_ms_per_token=25.0)])
    loaded = Table.load(table.save(tmp_path / "t.json"))
    assert loaded.configs()[0].decode_ms_per_token == 25.0


def _two_configs() -> Table:
    # fast first token but slow decode vs slower first token and fast decode
    a = replace(stats("low", 4, 12, 0.5, 80.0), decode_ms_per_token=30.0)
    b = replace(stats("high", 8, 16, 0.8, 150.0), decode_ms_per_token=10.0)
    return table_of([a, b], tolerance=0.0)


def test_total_budget_adds_decode_for_the_requested_tokens() -> None:
    table = _two_configs()
    d, decode = resolve_total(table, 400.0, 10)  # a: 80 + 300 = 380, b: 150 + 100 = 250
    assert d.knobs.tier == "high" and d.feasible and decode == 100.0 and d.expected_latency_ms == 250.0
    d, decode = resolve_total(table, 240.0, 10)  # nothing fits: the fastest whole request (b)
    assert d.knobs.tier == "high" and not d.feasible
    d, decode = resolve_total(table, 120.0, 0)  # zero tokens: first token only
    assert d.knobs.tier == "low" and d.feasible and decode == 0.0


def test_total_budget_without_decode_stats_uses_first_token_only() -> None:
    table = table_of([stats("low", 4, 12, 0.5, 80.0)])
    d, decode = resolve_total(table, 100.0, 50)
    assert d.feasible and decode is None and d.expected_latency_ms == 80.0


def test_config_missing_decode_stats_gets_the_slowest_known_rate() -> None:
    a = replace(stats("low", 4, 12, 0.5, 80.0), decode_ms_per_token=30.0)
    b = stats("high", 8, 16, 0.8, 150.0)  # unknown rate: assumed 30 ms/token, not 0
    d, _ = resolve_total(table_of([a, b], tolerance=0.0), 300.0, 10)
    assert d.knobs.tier == "low"


@pytest.mark.parametrize("tokens", [-1, 1.5, True, "8", 10**9, float("nan")])
def test_bad_token_counts_are_typed_errors(tokens: object) -> None:
    with pytest.raises(TokenCountError, match="max_new_tokens"):
        resolve_total(_two_configs(), 100.0, tokens)


@pytest.mark.parametrize("budget", [float("nan"), float("inf"), 0.0, -5.0, "x"])
def test_bad_budgets_are_typed_errors(budget: object) -> None:
    with pytest.raises(BudgetError):
        resolve_total(_two_configs(), budget, 1)
