"""Earliest-deadline-first admission (serving.replica.deadline_gate), on a real event loop."""

from __future__ import annotations

import asyncio

import pytest

from serving.replica.deadline_gate import DeadlineGate


def test_waiting_requests_enter_in_deadline_order_not_arrival_order() -> None:
    async def run() -> list[str]:
        gate, order = DeadlineGate(slots=1), []
        release = asyncio.Event()

        async def holder() -> None:
            async with gate.admitted(0.0):
                order.append("holder")
                await release.wait()

        async def request(name: str, deadline: float) -> None:
            async with gate.admitted(deadline):
                order.append(name)

        first = asyncio.create_task(holder())
        await asyncio.sleep(0)
        waiters = [asyncio.create_task(request(n, d)) for n, d in (("loose", 9.0), ("tight", 1.0), ("mid", 5.0))]
        await asyncio.sleep(0)
        assert gate.waiting == 3 and gate.busy == 1
        release.set()
        await asyncio.gather(first, *waiters)
        assert gate.busy == 0 and gate.waiting == 0
        assert gate.admitted_out_of_order >= 1
        return order

    assert asyncio.run(run()) == ["holder", "tight", "mid", "loose"]


def test_a_cancelled_waiter_gives_up_its_place_and_slots_are_not_lost() -> None:
    async def run() -> list[str]:
        gate, order = DeadlineGate(slots=2), []
        release = asyncio.Event()

        async def request(name: str, deadline: float, hold: bool = False) -> None:
            async with gate.admitted(deadline):
                order.append(name)
                if hold:
                    await release.wait()

        holders = [asyncio.create_task(request(f"h{i}", 0.0, hold=True)) for i in range(2)]
        await asyncio.sleep(0)
        gone = asyncio.create_task(request("gone", 1.0))
        kept = asyncio.create_task(request("kept", 2.0))
        await asyncio.sleep(0)
        gone.cancel()
        release.set()
        await asyncio.gather(*holders, kept)
        with pytest.raises(asyncio.CancelledError):
            await gone
        assert gate.busy == 0
        async with gate.admitted(0.0):  # the gate still admits at once
            order.append("after")
        return order

    assert asyncio.run(run()) == ["h0", "h1", "kept", "after"]


def test_slots_must_be_positive() -> None:
    with pytest.raises(ValueError, match="slots=0"):
        DeadlineGate(0)
