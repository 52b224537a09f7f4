"""Serving config validation and request-input parsing (no Ray needed)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from serving.config import BudgetSettings, LimitSettings, ServingConfig, load_config
from serving.errors import BadInput
from serving.ingress.body import validate_body
from serving.ingress.inputs import parse_budget, parse_dataset, parse_tolerance, single

H = "X-Latency-Budget-Ms"
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("serving_*.yaml")))
def test_bundled_configs_load(path: Path) -> None:
    assert load_config(path).controller.store


def test_unknown_key_is_an_error(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("controller: {store: /tmp/x}\nbudget: {default_budget_ms: 100, typo: 1}\n")
    with pytest.raises(ValueError, match="typo"):
        load_config(p)


def test_budget_settings_cross_checks() -> None:
    with pytest.raises(ValidationError, match="require_budget"):
        BudgetSettings(default_budget_ms=None, require_budget=False)
    with pytest.raises(ValidationError, match="exceeds"):
        BudgetSettings(default_budget_ms=500, max_budget_ms=100)
    with pytest.raises(ValidationError):
        ServingConfig.model_validate({"controller": {"store": "s", "poll_interval_s": 0}})
    with pytest.raises(ValidationError, match="different names"):
        ServingConfig.model_validate({"controller": {"store": "s"}, "headers": {"dataset": "x-latency-budget-ms"}})


DEFAULTS = BudgetSettings(default_budget_ms=250, max_budget_ms=10_000)


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ("abc", "not a number"),
        ("nan", "NaN"),
        ("NaN", "NaN"),
        ("inf", "infinite"),
        ("-inf", "infinite"),
        ("0", "not positive"),
        ("-5", "not positive"),
        ("10001", "above the maximum"),
        ("1e400", "infinite"),
        ("12ms", "not a number"),
    ],
)
def test_bad_budgets_name_header_value_and_accepted(raw: str, problem: str) -> None:
    with pytest.raises(BadInput) as e:
        parse_budget(raw, H, DEFAULTS)
    assert problem in e.value.problem
    body = e.value.to_dict()["error"]
    assert body["field"] == H and body["value"] == raw
    assert "milliseconds" in body["accepted"] and H in body["message"]


def test_budget_values_and_default() -> None:
    assert parse_budget(" 180.5 ", H, DEFAULTS) == 180.5
    assert parse_budget(None, H, DEFAULTS) == 250
    assert parse_budget("", H, DEFAULTS) == 250
    required = BudgetSettings(default_budget_ms=None, require_budget=True)
    with pytest.raises(BadInput, match="missing"):
        parse_budget(None, H, required)


def test_tolerance_and_dataset() -> None:
    assert parse_tolerance(None, "T") is None
    assert parse_tolerance("0.1", "T") == 0.1
    for bad in ("x", "nan", "-0.1", "1.5"):
        with pytest.raises(BadInput):
            parse_tolerance(bad, "T")
    assert parse_dataset(" vqav2 ", "D") == "vqav2"
    assert parse_dataset("", "D") is None
    with pytest.raises(BadInput):
        parse_dataset("x" * 500, "D")


def test_body_checks() -> None:
    limits = LimitSettings()
    validate_body({"prompt": "hi", "image": "aGVsbG8="}, limits, 64)
    with pytest.raises(BadInput, match="base64"):
        validate_body({"prompt": "hi", "image": "not base64!"}, limits, 64)
    with pytest.raises(BadInput, match="limit"):
        validate_body({"prompt": "hi", "max_new_tokens": 65}, limits, 64)
    with pytest.raises(BadInput) as e:
        validate_body({"prompt": "hi", "x" * 100_000: 1}, limits, 64)
    assert e.value.field == "body" and len(str(e.value)) < 400  # the key is quoted as a short prefix


@pytest.mark.parametrize("raw", ["1_000", "١٢٣", "０１", "0x10", "1e", "in f", "+-1"])
def test_budget_is_plain_ascii_decimal(raw: str) -> None:
    with pytest.raises(BadInput, match="not a number"):
        parse_budget(raw, H, DEFAULTS)
    assert parse_budget("1e2", H, DEFAULTS) == 100.0 and parse_budget("+.5", H, DEFAULTS) == 0.5


@pytest.mark.parametrize("value", [True, "16", 16.0, 1e2, None, [16]])
def test_max_new_tokens_is_a_strict_integer(value: object) -> None:
    with pytest.raises(BadInput) as e:
        validate_body({"prompt": "hi", "max_new_tokens": value}, LimitSettings(), 64)
    assert e.value.field == "max_new_tokens"


def test_repeated_values_are_refused() -> None:
    assert single([], "X") is None and single(["1"], "X") == "1"
    with pytest.raises(BadInput, match="2 times"):
        single(["1", "2"], "X")
