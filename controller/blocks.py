"""Which blocks a `num_active_blocks` knob keeps: an importance order, dropped from its front.

One rule for the runner that skips blocks (moe/runner.py) and the writer that records them
(controller/core_exp/write.py), so a profile file names the blocks that were really skipped."""

from __future__ import annotations

from collections.abc import Sequence

from controller.errors import KnobError

# The order the MolmoE profiling dropped middle blocks in: 15 kept -> {4}; 14 -> {4, 13};
# 13 -> {4, 10, 13}; 12 -> {2, 4, 10, 13}.
MOLMOE_DROP_ORDER_16: tuple[int, ...] = (4, 13, 10, 2)
BLOCK_ORDERS = ("molmoe", "first_n")


def drop_order(num_blocks: int, order: str | Sequence[int] = "molmoe") -> tuple[int, ...]:
    """Blocks in the order they are dropped. Block 0 is never dropped (the KV cache length and the
    attention mask are read from it); named orders drop the last block only after every middle one."""
    middle = list(range(num_blocks - 2, 0, -1))
    if order == "first_n":
        return tuple(range(num_blocks - 1, 0, -1))
    if order == "molmoe":
        scale = (num_blocks - 1) / 15
        head: list[int] = []
        for b in MOLMOE_DROP_ORDER_16:
            scaled = round(b * scale)
            if 0 < scaled < num_blocks - 1 and scaled not in head:
                head.append(scaled)
        rest = [b for b in middle if b not in head]
        return tuple(head + rest + ([num_blocks - 1] if num_blocks > 1 else []))
    if isinstance(order, str):
        raise KnobError("block_order", order, f"one of {', '.join(BLOCK_ORDERS)} or a list of block indices")
    custom = [int(b) for b in order]
    if len(set(custom)) != len(custom) or any(not 0 < b < num_blocks for b in custom):
        raise KnobError(
            "block_order", list(order), f"distinct block indices in 1..{num_blocks - 1} (block 0 stays)"
        )
    return tuple(custom)


def blocks_range(num_blocks: int, order: str | Sequence[int] = "molmoe") -> tuple[int, int]:
    return num_blocks - len(drop_order(num_blocks, order)), num_blocks


def skipped_blocks(num_active: int, num_blocks: int, order: str | Sequence[int] = "molmoe") -> frozenset[int]:
    lo, hi = blocks_range(num_blocks, order)
    if isinstance(num_active, bool) or not isinstance(num_active, int) or not lo <= num_active <= hi:
        raise KnobError("num_active_blocks", num_active, f"an integer in {lo}..{hi}")
    return frozenset(drop_order(num_blocks, order)[: num_blocks - num_active])


def active_blocks(num_active: int, num_blocks: int, order: str | Sequence[int] = "molmoe") -> list[int]:
    skip = skipped_blocks(num_active, num_blocks, order)
    return [b for b in range(num_blocks) if b not in skip]
