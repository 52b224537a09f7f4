"""The table file: round trip, checksum, every load failure as one error type, reference format."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from controller.errors import TableLoadError
from controller.table import Table
from tests.controller.tables import grid, stats, table_of


@pytest.fixture()
def table():
    return table_of(grid(), okvqa=[stats("low", 4, 12, 0.3, 90)])


def test_round_trip_is_exact(tmp_path: Path, table) -> None:
    path = table.save(tmp_path / "sub" / "t.json")
    loaded = Table.load(path)
    assert loaded.version_id == table.version_id and loaded.sha256 == table.sha256
    assert loaded.configs() == table.configs() and loaded.configs("okvqa") == table.configs("okvqa")
    for b in (50, 120, 150, 220):
        assert loaded.resolve(b) == table.resolve(b)
    assert loaded.origin == str(path)


def test_file_has_explicit_knobs_and_metadata(tmp_path: Path, table) -> None:
    data = json.loads(table.save(tmp_path / "t.json").read_text())
    assert data["schema_version"] == 1 and len(data["sha256"]) == 64
    c = data["scopes"]["global"]["configs"][0]
    assert {"tier", "top_k", "num_active_blocks"} <= set(c) and "key" not in c
    assert data["build"]["aggregation_method"] == "mean" and data["created_at"].endswith("Z")


def test_with_version_restamps_and_stays_valid(tmp_path: Path, table) -> None:
    t2 = table.with_version("v2")
    assert t2.version_id == "v2" and t2.sha256 != table.sha256
    assert Table.load(t2.save(tmp_path / "t.json")).version_id == "v2"


def _load_text(tmp_path: Path, text: str | bytes) -> Table:
    p = tmp_path / "bad.json"
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    return Table.load(p)


@pytest.mark.parametrize(
    "mutate,problem",
    [
        (lambda d: d["scopes"]["global"]["configs"][0].update(accuracy=0.99), "checksum mismatch"),
        (lambda d: d.update(schema_version=7), "schema error"),
        (lambda d: d["scopes"]["global"].update(configs=[]), "schema error"),
        (lambda d: d["scopes"].pop("global"), "schema error"),
        (lambda d: d["scopes"]["global"]["configs"][0].update(tier="ultra"), "schema error"),
        (lambda d: d["scopes"]["global"]["configs"][0].update(latency_ms=-3.0), "schema error"),
        (lambda d: d.update(surprise=1), "schema error"),
    ],
)
def test_invalid_tables_raise_one_error_type(tmp_path: Path, table, mutate, problem) -> None:
    data = table.to_json_dict()
    mutate(data)
    with pytest.raises(TableLoadError, match=problem) as e:
        _load_text(tmp_path, json.dumps(data))
    assert "bad.json" in str(e.value)


def test_nan_in_table_is_rejected(tmp_path: Path, table) -> None:
    text = re.sub(r'"accuracy": [0-9.]+', '"accuracy": NaN', table.to_json_bytes().decode(), count=1)
    with pytest.raises(TableLoadError, match="schema error"):
        _load_text(tmp_path, text)


@pytest.mark.parametrize(
    "content,problem",
    [
        (b"", "empty"),
        (b"  \n", "empty"),
        (b'{"format": ', "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        (b"\xff\xfe", "not valid JSON"),
    ],
)
def test_unreadable_content(tmp_path: Path, content: bytes, problem: str) -> None:
    with pytest.raises(TableLoadError, match=problem):
        _load_text(tmp_path, content)


def test_truncated_file(tmp_path: Path, table) -> None:
    with pytest.raises(TableLoadError, match="not valid JSON"):
        _load_text(tmp_path, table.to_json_bytes()[:-40])


def test_missing_and_directory(tmp_path: Path) -> None:
    with pytest.raises(TableLoadError, match="not found"):
        Table.load(tmp_path / "nope.json")
    with pytest.raises(TableLoadError, match="directory"):
        Table.load(tmp_path)


def reference_table_json(nan_config: bool = False) -> dict:
    """A file as the reference implementation's save() writes it."""
    config_table = {
        "low_4_12": {
            "accuracy": 0.41,
            "latency": 95.0,
            "num_samples": 100,
            "accuracy_std": 0.3,
            "latency_std": 5.0,
        },
        "medium_8_16": {
            "accuracy": 0.66,
            "latency": 140.0,
            "num_samples": 100,
            "accuracy_std": 0.3,
            "latency_std": 7.0,
        },
        "high_8_16": {
            "accuracy": 0.78,
            "latency": 180.0,
            "num_samples": 100,
            "accuracy_std": 0.2,
            "latency_std": 9.0,
        },
    }
    if nan_config:
        config_table["high_6_14"] = {"accuracy": math.nan, "latency": 170.0, "num_samples": 100}
    return {
        "config_table": config_table,
        "lookup_table": {"95.0": {"tier": "low", "top_k": 4, "num_active_blocks": 12}},
        "statistics": {"latency_range": {"min": 95.0, "max": 180.0}},
        "metadata": {
            "aggregation_method": "median",
            "tolerance": 0.1,
            "use_prefill_only": True,
            "num_profiling_results": 300,
        },
    }


def test_reads_reference_format(tmp_path: Path) -> None:
    t = _load_text(tmp_path, json.dumps(reference_table_json(nan_config=True)))
    assert t.version_id.startswith("seed-") and t.build.aggregation_method == "median"
    assert t.build.tolerance == 0.1
    assert len(t.configs()) == 3  # the NaN config never reaches the table
    assert t.source["dropped"] == {"nonfinite_config": 1}
    assert t.resolve(150).knobs.tier == "medium"
    # Re-saving converts to the native format, which loads back identically.
    again = Table.load(t.save(tmp_path / "native.json"))
    assert again.configs() == t.configs()


def test_reference_format_without_usable_configs(tmp_path: Path) -> None:
    data = {"config_table": {"low_4_12": {"accuracy": math.nan, "latency": 1.0}, "bad key": {}}}
    with pytest.raises(TableLoadError, match="no usable configs"):
        _load_text(tmp_path, json.dumps(data))
