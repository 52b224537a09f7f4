"""Earliest-deadline-first admission to a model replica's batches.

Serve hands a replica's queued calls to `@serve.batch` in arrival order, so a request with a
100 ms budget waits behind one with 400 ms that came first, and misses although the other had room
to spare. The gate lets at most `slots` requests into the batcher at a time and, when one leaves,
admits the waiting request whose deadline (arrival + budget) is earliest. Pure asyncio, one event
loop (a replica's); no Ray here.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from serving.errors import ServingConfigError


class DeadlineGate:
    def __init__(self, slots: int) -> None:
        if slots < 1:
            raise ServingConfigError(f"slots={slots} must be >= 1 (model.batch.max_batch_size)")
        self.slots, self.busy = slots, 0
        # (deadline, arrival order, future, what the caller tells about the request, or None)
        self._waiting: list[tuple[float, int, asyncio.Future[None], Any]] = []
        self._seq = itertools.count()
        self.admitted_out_of_order = 0  # admissions that overtook an earlier arrival (for stats)

    @property
    def waiting(self) -> int:
        return sum(not f.done() for _, _, f, _ in self._waiting)

    def behind(self) -> list[tuple[float, Any]]:
        """(deadline, info) of the requests still waiting, earliest deadline first."""
        return [(d, info) for d, _, f, info in sorted(self._waiting, key=lambda w: (w[0], w[1])) if not f.done()]

    @asynccontextmanager
    async def admitted(self, deadline: float, info: Any = None) -> AsyncIterator[None]:
        await self._acquire(deadline, info)
        try:
            yield
        finally:
            self._release()

    async def _acquire(self, deadline: float, info: Any) -> None:
        if self.busy < self.slots and not self._waiting:
            self.busy += 1
            return
        seq = next(self._seq)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiting, (deadline, seq, fut, info))
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self._release()  # admitted and cancelled at once: hand the slot on
            raise
        if any(s < seq for _, s, f, _ in self._waiting if not f.done()):
            self.admitted_out_of_order += 1

    def _release(self) -> None:
        while self._waiting:
            _, _, fut, _ = heapq.heappop(self._waiting)
            if not fut.done():  # a cancelled waiter is skipped
                fut.set_result(None)  # the slot passes on: busy stays the same
                return
        self.busy -= 1
