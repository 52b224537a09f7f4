"""bench.gpu_streams' command line: budgets given by hand are checked before anything starts."""

from __future__ import annotations

import pytest

from bench.gpu_streams import main


@pytest.mark.parametrize("bad", ["nan", "inf", "-5", "0", "fast", "1e9"])
def test_a_budget_that_is_not_a_number_of_ms_is_refused(bad: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["--out", "/nonexistent", "--budgets", "90", bad])
    assert e.value.code == 2
    assert f"budget {bad!r}" in capsys.readouterr().err


@pytest.mark.parametrize("bad", ["after=0", "after=5", "after=two", "other=2", "after"])
def test_a_decode_slots_override_that_names_no_tree_or_no_count_is_refused(
        bad: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["--out", "/nonexistent", "--trees", "after=.", "--slots", bad])
    assert f"--slots {bad!r}" in str(e.value)
