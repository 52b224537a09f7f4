"""Errors that used to leave a user stuck (issue 19 item 16): each one line, non-zero, with the way out."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from controller.core_exp.synthetic import generate_sample_results

ROOT = Path(__file__).resolve().parents[2]


def lookupctl(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lookupctl", *argv], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)


def one_error_line(run: subprocess.CompletedProcess[str], command: str) -> str:
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"lookupctl {command}: error: "), run.stderr
    return lines[0]


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("core_exp")
    generate_sample_results(out, datasets=("text_vqa", "okvqa"), samples_per_config=2, seed=3)
    return out


def test_build_on_a_dataset_folder_names_its_parent(results: Path, tmp_path: Path) -> None:
    run = lookupctl("build", "--results_dir", str(results / "text-vqa"), "--output_file", str(tmp_path / "t.json"),
                    "--no_cache")
    assert run.returncode == 2
    line = one_error_line(run, "build")
    assert "no usable samples found" in line and "looks like one dataset folder" in line
    assert f"pass its parent {results.resolve()}" in line and "docs/core-exp-format.md" in line
    assert not (tmp_path / "t.json").exists()


def test_build_on_an_empty_folder_shows_the_layout(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    run = lookupctl("build", "--results_dir", str(tmp_path / "empty"), "--output_file", str(tmp_path / "t.json"))
    assert run.returncode == 2
    line = one_error_line(run, "build")
    assert "RESULTS_DIR/<dataset folder, e.g. text-vqa>/" in line and "_imgsizetier-<tier>_" in line
    assert "dataset folder: pass its parent" not in line and "lookupctl sample-data --out DIR" in line


def test_sample_data_refuses_a_folder_that_is_not_empty(tmp_path: Path) -> None:
    out = tmp_path / "r"
    first = lookupctl("sample-data", "--out", str(out), "--samples_per_config", "2", "--datasets", "okvqa")
    assert first.returncode == 0
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    run = lookupctl("sample-data", "--out", str(out), "--samples_per_config", "2", "--datasets", "text_vqa")
    assert run.returncode == 2
    line = one_error_line(run, "sample-data")
    assert f"--out {out} is not empty (1 entries: okvqa)" in line and "--force" in line
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before  # nothing written

    forced = lookupctl("sample-data", "--out", str(out), "--samples_per_config", "2", "--datasets", "text_vqa",
                       "--force")
    assert forced.returncode == 0 and {p.name for p in out.iterdir()} == {"okvqa", "text-vqa"}


def test_sample_data_into_a_file_or_an_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    run = lookupctl("sample-data", "--out", str(tmp_path / "f"))
    assert run.returncode == 2 and "is a file" in one_error_line(run, "sample-data")
    (tmp_path / "e").mkdir()
    assert lookupctl("sample-data", "--out", str(tmp_path / "e"), "--samples_per_config", "1",
                     "--datasets", "okvqa").returncode == 0


def test_versions_of_a_store_that_does_not_exist(tmp_path: Path) -> None:
    run = lookupctl("versions", "--store", str(tmp_path / "typo"))
    assert run.returncode != 0
    assert str(tmp_path / "typo") in one_error_line(run, "versions")


def test_evaluate_summary_only_has_no_budget_rows(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "sample_results" / "core_exp_synthetic" / "okvqa", tmp_path / "okvqa")
    run = lookupctl("evaluate", "--results_dir", str(tmp_path), "--compare", "mean,p90", "--budgets", "120", "170",
                    "--summary_only", "--no_cache")
    assert run.returncode == 0, run.stderr
    assert "averages over 2 budgets" in run.stdout and "compare, scope" not in run.stdout
    assert not [ln for ln in run.stdout.splitlines() if ln.split()[:1] in (["120"], ["170"])]
