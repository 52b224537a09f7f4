from __future__ import annotations

import pytest

from controller.blocks import active_blocks, blocks_range, skipped_blocks
from controller.core_exp.write import default_active_blocks
from controller.errors import KnobError


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


def test_writer_records_the_blocks_the_rule_keeps_at_every_depth() -> None:
    # The profiler's writer and the runner share one rule; before, they disagreed off 16 blocks and
    # on block 0.
    for depth in range(1, 33):
        lo, hi = blocks_range(depth)
        for kept in range(lo, hi + 1):
            recorded = default_active_blocks(kept, depth)
            assert recorded == [b for b in range(depth) if b not in skipped_blocks(kept, depth)]
            assert 0 in recorded and len(recorded) == kept
