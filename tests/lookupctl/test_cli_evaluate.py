"""`lookupctl evaluate` on hand-written core_exp files in tmp_path: output, JSON, plot, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from lookupctl import main

# Every question gives the same accuracy and latency under one config, so the numbers do not depend on
# which questions the split holds out: low/4/12 0.3 @ 50 ms, medium/8/16 0.6 @ 100 ms, high/8/16 0.9 @ 150 ms.
CONFIGS = (("low", 4, 12, 0.3, 50.0), ("medium", 8, 16, 0.6, 100.0), ("high", 8, 16, 0.9, 150.0))


def write_results(root: Path, *, with_qid: bool = True, questions: int = 10) -> Path:
    folder = root / "text-vqa"
    folder.mkdir(parents=True, exist_ok=True)
    for tier, k, n, acc, lat in CONFIGS:
        records: list[dict[str, Any]] = []
        for q in range(questions):
            rec: dict[str, Any] = {
                "sample_id": q, "tier": tier, "top_k": k, "num_active_blocks": n, "accuracy": acc,
                "T_vision_total": lat / 2, "T_LLM_prefill": lat / 2, "T_LLM_decode": 100.0, "T_total": lat + 100,
            }
            if with_qid:
                rec["metadata"] = {"question_id": f"q{q}"}
            records.append(rec)
        data = {"tier": tier, "top_k": k, "num_active_blocks": n, "per_sample_results": records}
        (folder / f"text-vqa_imgsizetier-{tier}_crops2_topk{k}_blocks{n}.json").write_text(json.dumps(data))
    return root


def cli(*args: str) -> int:
    return main(["evaluate", "--no_cache", *args])


def test_evaluate_prints_json_and_plot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = write_results(tmp_path / "results")
    out_json, out_png = tmp_path / "out" / "eval.json", tmp_path / "out" / "eval.png"
    code = cli("--results_dir", str(root), "--test-fraction", "0.3", "--seed", "1", "--budgets", "40", "120", "200",
               "--tolerance", "0", "--json", str(out_json), "--plot", str(out_png))
    text = capsys.readouterr().out
    assert code == 0
    assert "split: 7 build / 3 test questions (21 / 9 samples)" in text  # round(0.3 * 10) = 3
    assert "averages over 3 budgets, scope global" in text
    data = json.loads(out_json.read_text())
    rows = data["strategies"][0]["scopes"][0]["rows"]
    # 40: below every config -> low/4/12, late for all; 120: medium fits; 200: the full config fits
    assert [(r["chosen"]["tier"], r["chosen_feasible"]) for r in rows] == [("low", False), ("medium", True),
                                                                           ("high", True)]
    assert [r["chosen"]["accuracy"] for r in rows] == pytest.approx([0.3, 0.6, 0.9])
    assert [r["chosen"]["violation_rate"] for r in rows] == pytest.approx([1, 0, 0])
    assert [r["chosen"]["effective_accuracy"] for r in rows] == pytest.approx([0, 0.6, 0.9])
    assert [r["regret"] for r in rows] == pytest.approx([0, 0, 0])
    assert [r["full"]["violation_rate"] for r in rows] == pytest.approx([1, 1, 0])
    assert [r["fastest"]["effective_accuracy"] for r in rows] == pytest.approx([0, 0.3, 0.3])
    avg = data["strategies"][0]["scopes"][0]["averages"]
    assert avg["accuracy"] == pytest.approx(0.6) and avg["attainment"] == pytest.approx(2 / 3)
    assert avg["effective_accuracy"] == pytest.approx(0.5)
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compare_and_budget_range(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = write_results(tmp_path)
    assert cli("--results_dir", str(root), "--compare", "mean,p90,p95", "--budget_range", "60", "160", "50",
               "--per_dataset") == 0
    text = capsys.readouterr().out
    assert "compare, scope global" in text and "compare, scope text_vqa" in text
    for name in ("mean acc", "p90 acc", "p95 acc"):
        assert name in text
    assert "averages over 3 budgets" in text  # 60, 110, 160


def test_summary_only_prints_no_per_budget_row(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Issue 19 item 16: with --compare, the per-budget comparison table still came out.
    root = write_results(tmp_path)
    assert cli("--results_dir", str(root), "--compare", "mean,p90", "--budget_range", "60", "160", "50",
               "--per_dataset", "--summary_only") == 0
    text = capsys.readouterr().out
    assert "averages over 3 budgets, scope global" in text and "averages over 3 budgets, scope text_vqa" in text
    assert "compare, scope" not in text and "strategy mean (" not in text
    budget_rows = [ln for ln in text.splitlines() if ln.split() and ln.split()[0] in {"60", "110", "160"}]
    assert budget_rows == []


def test_position_fallback_is_stated(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = write_results(tmp_path, with_qid=False)
    assert cli("--results_dir", str(root), "--budgets", "120") == 0
    assert "split by record position (no question id in metadata) for: text_vqa" in capsys.readouterr().out


@pytest.mark.parametrize(("args", "message"), [
    (["--test_fraction", "1.5"], "test_fraction=1.5 is not valid"),
    (["--test_fraction", "0"], "test_fraction=0.0 is not valid"),
    (["--budgets", "10", "20"], "below the fastest config's latency"),
    (["--budgets", "-5"], "is not positive"),
    (["--budget_range", "100", "50", "10"], "budget_range 100 50 10 is not valid"),
    (["--compare", "mean,fast"], "compare strategy 'fast' is not valid"),
    (["--tolerance", "3"], "tolerance=3.0 is not valid"),
])
def test_bad_input_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str],
                               message: str) -> None:
    root = write_results(tmp_path)
    assert cli("--results_dir", str(root), *args) == 2
    err = capsys.readouterr().err
    assert err.startswith("lookupctl evaluate: error: ") and message in err and err.count("\n") == 1


def test_empty_split_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = write_results(tmp_path, questions=1)
    assert cli("--results_dir", str(root), "--budgets", "120") == 2
    assert "set is empty" in capsys.readouterr().err


def test_budgets_and_budget_range_exclude_each_other(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        cli("--results_dir", str(tmp_path), "--budgets", "100", "--budget_range", "1", "2", "1")
    assert e.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err
