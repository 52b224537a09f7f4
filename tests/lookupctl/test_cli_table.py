"""`lookupctl build / predict / inspect` end to end on real files, and their one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from controller.core_exp.synthetic import generate_sample_results
from controller.table import Table
from lookupctl import main


@pytest.fixture(scope="module")
def results_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("core_exp")
    generate_sample_results(out, samples_per_config=10, seed=2, quirks=True)
    return out


@pytest.fixture(scope="module")
def table_path(results_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("t") / "table.json"
    assert main(["build", "--results_dir", str(results_dir), "--output_file", str(out), "--no_cache"]) == 0
    return out


def test_build_prints_summary_with_drops(results_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "t.json"
    code = main(["build", "--results-dir", str(results_dir), "--output-file", str(out),
                 "--aggregation-method", "median", "--latency-quantile", "0.9", "--min-samples", "2",
                 "--datasets", "text-vqa", "okvqa", "--cache-dir", str(tmp_path / "c")])
    assert code == 0
    text = capsys.readouterr().out
    assert "configs:" in text and "frontier:" in text and "latency:" in text and str(out) in text
    table = Table.load(out)
    assert table.build.aggregation_method == "median" and table.build.latency_quantile == 0.9
    assert set(table.scopes) == {"global", "okvqa", "text_vqa"}


def test_build_total_latency_and_strict(results_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "t.json"
    assert main(["build", "--results_dir", str(results_dir), "--output_file", str(out), "--use_total_latency",
                 "--no_cache", "--quiet"]) == 0
    assert Table.load(out).build.latency_metric == "total"
    assert main(["build", "--results_dir", str(results_dir), "--output_file", str(tmp_path / "s.json"),
                 "--strict", "--no_cache"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lookupctl build: error:") and ".json" in err[0]


def test_predict_text_and_json(table_path: Path, capsys) -> None:
    assert main(["predict", "--table", str(table_path), "--budgets", "1", "150", "400"]) == 0
    text = capsys.readouterr().out
    assert "NO (fastest config)" in text and "yes" in text
    assert main(["predict", "--table", str(table_path), "--test_budgets", "150", "--json",
                 "--dataset", "okvqa", "--tolerance", "0"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["scope"] == "okvqa" and d["tolerance"] == 0 and d["budget_ms"] == 150


def test_inspect_and_plot(table_path: Path, tmp_path: Path, capsys) -> None:
    png = tmp_path / "f.png"
    assert main(["inspect", "--table", str(table_path), "--plot", str(png), "--all_configs"]) == 0
    text = capsys.readouterr().out
    assert "frontier of scope 'global'" in text and "all configs" in text
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert main(["inspect", "--table", str(table_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["version_id"]


@pytest.mark.parametrize("argv,needle", [
    (["predict", "--table", "{table}", "--budgets", "abc"], "'abc' is not a number"),
    (["predict", "--table", "{table}", "--budgets", "-5"], "is not positive"),
    (["predict", "--table", "{table}", "--budgets", "inf"], "is infinite"),
    (["predict", "--table", "{table}", "--budgets", "100", "--tolerance", "2"], "tolerance 2.0"),
    (["predict", "--table", "/nonexistent/t.json", "--budgets", "100"], "file not found"),
    (["build", "--results_dir", "/nonexistent", "--output_file", "x.json"], "/nonexistent"),
    (["build", "--results_dir", "{results}", "--output_file", "x.json", "--datasets", "imagenet"],
     "datasets found: coco_2014_vqa"),
    (["build", "--results_dir", "{results}", "--output_file", "x.json", "--tolerance", "5"], "tolerance=5.0"),
    (["build", "--results_dir", "{results}", "--output_file", "x.json", "--aggregation_method", "mode"],
     "invalid choice"),
    (["predict", "--budgets", "100"], "--table"),
])
def test_errors_are_one_line(argv, needle, table_path: Path, results_dir: Path, tmp_path: Path) -> None:
    argv = [a.format(table=table_path, results=results_dir) for a in argv]
    proc = subprocess.run([sys.executable, "-m", "lookupctl", *argv], capture_output=True, text=True,
                          cwd=tmp_path)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_export_reference_format_round_trips(table_path: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "lookup_table_baseline.json"
    assert main(["export", "--table", str(table_path), "--format", "reference", "--output_file", str(out)]) == 0
    assert "per-dataset scopes not exported" in capsys.readouterr().out
    raw = json.loads(out.read_text())
    # What the reference's load() reads: config_table keyed "tier_topk_blocks", a float-keyed grid.
    assert {"config_table", "lookup_table", "statistics", "metadata"} <= set(raw)
    table = Table.load(table_path)
    assert {tuple(k.split("_")) for k in raw["config_table"]} == {
        (c.knobs.tier, str(c.knobs.top_k), str(c.knobs.num_active_blocks)) for c in table.configs()}
    assert all({"accuracy", "latency", "num_samples"} <= set(v) for v in raw["config_table"].values())
    assert all(float(b) > 0 for b in raw["lookup_table"])
    assert raw["metadata"]["tolerance"] == table.build.tolerance
    back = Table.load(out)  # this project reads the reference layout back: same global answers
    for budget in (1.0, 120.0, 150.0, 180.0, 240.0, 400.0):
        a, b = table.resolve(budget), back.resolve(budget)
        assert (a.knobs, a.feasible, a.expected_accuracy, a.expected_latency_ms) == (
            b.knobs, b.feasible, b.expected_accuracy, b.expected_latency_ms)
