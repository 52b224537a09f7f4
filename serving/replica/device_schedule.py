"""When queued work will start on a device that runs one decode batch at a time: the device's order
and the wait it promises, in one place (serving.replica.device follows it, late binding reads it).

The H100 runs of issue 17 (docs/BENCHMARKS.md, run 4) missed budgets that late binding had judged
met: a request bound when it left the replica's queue then waited 150-300 ms on the device, where
the wait late binding had been told was 50-140. Three things made the promise wrong:
- the device took waiting work earliest deadline first, so work bound later with a tighter budget
  went ahead of work already promised a start;
- work of the running pair kept joining the running batch while other pairs waited, and each join
  runs its prefill at once, which pushes the drain back by that prefill;
- a pair that waits behind another waiting pair waits for that pair's whole batch too, and the wait
  told to late binding was the running batch's drain alone.
So the order here is the order work was handed in (late binding handed it in counting everything
before it as ahead), with work that can no longer meet its deadline last (it must not open its pair
ahead of work that still can); a join while work waits must leave every waiting request that can
still be met still met; and the wait for a pair counts the decode of every waiting pair's batch
that opens before it.

A device may hold more than one decode batch (`lanes`: the engine's decode slots, each its own KV
rows). It steps the running batches in turn, so each runs at the pace of all of them together
(`interleaved`), and a waiting batch opens in whichever lane frees first. With one lane this is the
one-batch-at-a-time device above.
Pure: no threads, no time source; milliseconds, deadlines as ms left.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

Pair = tuple[int, int]


@dataclass(frozen=True)
class Queued:
    """Work waiting on the device: its knob pair, its members' prefills one after another
    (`first_ms`), its longest member's decode (`span_ms`, what its batch lasts after the prefills),
    and the ms left to its tightest member's deadline (inf: none)."""

    pair: Pair
    first_ms: float
    span_ms: float
    left_ms: float = math.inf

    @property
    def lost(self) -> bool:
        """Late even if it began now."""
        return self.first_ms > self.left_ms

    def later(self, ms: float) -> Queued:
        return Queued(self.pair, self.first_ms, self.span_ms, self.left_ms - ms)


def in_order(queued: Sequence[Queued]) -> list[int]:
    """Indexes of `queued` (in hand-in order) in the order the device takes them: work that can
    still meet its deadline first, lost work after it, each in hand-in order."""
    return sorted(range(len(queued)), key=lambda i: queued[i].lost)


def interleaved(running: Sequence[tuple[float, int]]) -> list[float]:
    """Ms until each running batch drains, given each one's own (ms, steps left) when it ran alone:
    the device steps them in turn, so round r costs one step of every batch that still has r steps,
    and batch i drains after sum over j of min(steps_i, steps_j) x step_j."""
    step = [ms / steps if steps > 0 else 0.0 for ms, steps in running]
    return [sum(min(si, sj) * step[j] for j, (_, sj) in enumerate(running)) if si > 0 else ms
            for ms, si in running]


def lanes(drains: Sequence[float], slots: int) -> list[float]:
    """Ms until each of a device's `slots` can open a batch: the running batches' `drains`, 0 for
    each free slot."""
    return [*drains, *[0.0] * max(0, slots - len(drains))]


def _first_free(free: list[float]) -> int:
    return min(range(len(free)), key=free.__getitem__)


def starts(queued: Sequence[Queued], lanes: Sequence[float]) -> list[float]:
    """Ms until each of `queued` (taken in this order) begins its prefill, given the ms until each
    lane can open a batch (`lanes`: a running batch's drain, 0 for a free lane): batches open in the
    order their pair first appears, each in the lane that frees first; each work of a pair prefills
    after the ones before it, and a batch holds its lane for its prefills + its longest decode."""
    sessions: dict[Pair, list[int]] = {}
    for i, q in enumerate(queued):
        sessions.setdefault(q.pair, []).append(i)
    out = [0.0] * len(queued)
    free = list(lanes) or [0.0]
    for members in sessions.values():
        lane = _first_free(free)
        at = free[lane]
        for i in members:
            out[i] = at
            at += queued[i].first_ms
        free[lane] = at + max(queued[i].span_ms for i in members)
    return out


def leaves_room(queued: Sequence[Queued], lanes: Sequence[float], extra_ms: float) -> bool:
    """Whether `extra_ms` more device time now (a join's prefill, which holds every lane) leaves
    every queued work that can still meet its deadline still meeting it."""
    order = in_order(queued)
    ordered = [queued[i] for i in order]
    for q, at in zip(ordered, starts(ordered, lanes), strict=True):
        if not q.lost and at + q.first_ms <= q.left_ms < at + extra_ms + q.first_ms:
            return False
    return True


def wait_ms(queued: Sequence[Queued], lanes: Sequence[float], pair: Pair, *, running: bool, joins: bool,
            first_ms: float, opens: bool) -> float:
    """The decode a newcomer of `pair` waits for before it can begin (the prefills ahead of it are
    the device's backlog, counted apart): 0 when it joins the running batch of its pair now
    (`running`, `joins`: it ends within that batch, and its prefill leaves room for the work that
    waits) or opens a batch at once (`opens`: a lane is free and nothing waits); else until a lane
    frees for its batch, after the waiting pairs' batches that open before its own (each in the
    lane that frees first; its own pair's waiting batch, if any, is the one it joins)."""
    waiting = [queued[i] for i in in_order(queued) if not queued[i].lost]
    if running and (not waiting or (joins and leaves_room(queued, lanes, first_ms))):
        return 0.0
    if opens and not queued:
        return 0.0
    free = list(lanes) or [0.0]
    seen: dict[Pair, float] = {}
    for q in waiting:
        seen[q.pair] = max(seen.get(q.pair, 0.0), q.span_ms)
    for p, span in seen.items():
        lane = _first_free(free)
        if p == pair:
            return free[lane]  # it joins that batch when it opens
        free[lane] += span
    return min(free)
