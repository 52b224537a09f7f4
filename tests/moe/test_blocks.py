from __future__ import annotations

import pytest

from controller.errors import KnobError
from moe.blocks import active_blocks, blocks_range, skipped_blocks


def test_molmoe_order_matches_profiling() -> None:
    assert skipped_blocks(15, 16) == {4}
    assert skipped_blocks(14, 16) == {4, 13}
    assert skipped_blocks(13, 16) == {4, 10, 13}
    assert skipped_blocks(12, 16) == {2, 4, 10, 13}
    assert active_blocks(16, 16) == list(range(16))
    assert 0 in active_blocks(1, 16) and blocks_range(16) == (1, 16)


def test_first_n_and_custom_orders() -> None:
    assert active_blocks(12, 16, "first_n") == list(range(12))
    assert skipped_blocks(14, 16, [7, 3, 9]) == {7, 3}
    assert blocks_range(16, [7, 3, 9]) == (13, 16)


def test_out_of_range_names_knob_and_range() -> None:
    with pytest.raises(KnobError, match=r"num_active_blocks=17 .*1\.\.16"):
        skipped_blocks(17, 16)
    with pytest.raises(KnobError, match="block_order"):
        blocks_range(16, [0, 3])
