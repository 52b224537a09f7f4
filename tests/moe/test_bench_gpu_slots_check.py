"""bench.gpu_slots_check on the CPU (tiny preset, eager engine): the same script a GPU run uses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.gpu_slots_check import main


def test_the_slots_check_runs_on_the_cpu_and_finds_equal_tokens(tmp_path: Path) -> None:
    assert main(["--out", str(tmp_path), "--preset", "tiny", "--device", "cpu", "--a_tokens", "16"]) == 0
    got = json.loads((tmp_path / "gpu_slots_check.json").read_text())
    assert got["tokens_equal_alone"] is True and got["one_slot_refuses_a_second_pair"] is True
    assert got["alone_repeatable"] is True and got["deterministic"] is False
    diff = got["first_difference"]
    assert [diff[k] for k in ("a_side_by_side", "b_side_by_side", "a_alone_again", "b_alone_again")] == [None] * 4
    assert got["a_tokens"] == 16 and got["b_tokens"] == 16
    # the second slot's rows: the KV buffer grows by one slot's rows
    assert got["capture_2_slots"]["kv_cache_mib"] > got["capture_1_slot"]["kv_cache_mib"]


def test_a_token_count_out_of_range_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="--a_tokens=4 must be in"):
        main(["--out", str(tmp_path), "--a_tokens", "4"])


def test_first_difference_names_the_first_differing_character() -> None:
    from bench.gpu_slots_check import _first_difference

    assert _first_difference("abc", "abc") is None
    assert _first_difference("abc", "abd") == 2
    assert _first_difference("ab", "abc") == 2
