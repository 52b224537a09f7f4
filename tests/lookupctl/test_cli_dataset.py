"""An unknown dataset is an error, not a silent global answer (issue 19 item 14): the real CLI."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.lookupctl.test_cli_errors import lookupctl, one_error_line
from tests.support.tables import synthetic_table


@pytest.mark.parametrize("command", ["predict", "inspect"])
def test_unknown_dataset_is_one_line_naming_the_known_ones(command: str, tmp_path: Path) -> None:
    table = synthetic_table(datasets=("vqav2", "text_vqa")).save(tmp_path / "t.json")
    extra = ["--budgets", "120"] if command == "predict" else []
    run = lookupctl(command, "--table", str(table), "--dataset", "textvqa", *extra)
    assert run.returncode == 2 and run.stdout == ""
    line = one_error_line(run, command)
    assert "'textvqa' not found" in line and "text_vqa, vqav2" in line


def test_known_dataset_in_another_spelling_still_answers(tmp_path: Path) -> None:
    table = synthetic_table(datasets=("vqav2", "text_vqa")).save(tmp_path / "t.json")
    run = lookupctl("predict", "--table", str(table), "--dataset", "Text-VQA", "--budgets", "120")
    assert run.returncode == 0 and "scope text_vqa" in run.stdout
