"""The device thread (serving.replica.device) on the simulated backend: decode batches run a step at
a time, and work that arrives between steps joins a running batch of its knob pair instead of
waiting for it to end; work of another pair waits, and the wait it faces is published."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from controller.knobs import Knobs
from serving.replica.backends.base import ModelRequest
from serving.replica.backends.simulated import SimulatedBackend
from serving.replica.device import Device

LONG = Knobs("low", 4, 12)


def _backend() -> SimulatedBackend:
    return SimulatedBackend(latency_source="table", jitter_sigma=0, decode="per_token")


def _req(tokens: int, first_ms: float = 20.0, decode_ms: float = 2.0) -> ModelRequest:
    return ModelRequest("p", max_new_tokens=tokens, expected_ms=first_ms, decode_ms_per_token=decode_ms)


def test_a_newcomer_joins_a_running_long_stream_and_finishes_long_before_it() -> None:
    async def run() -> tuple[float, float, float, list[str]]:
        device = Device(_backend())
        t0 = time.monotonic()
        pieces: list[str] = []
        long = device.submit(LONG, [_req(300)], [lambda s: (pieces.append(s) if s else None) or True])
        await asyncio.sleep(0.1)  # the stream decodes (300 x 2 ms = 0.6 s in all)
        # Another tier of the same pair joins between two steps: its first token + 4 tokens, ~30 ms.
        await device.submit(Knobs("high", 4, 12), [_req(4)], [None])
        short_at = time.monotonic() - t0
        (whole,), _ = await long
        device.stop()
        return short_at, time.monotonic() - t0, float(whole.output_tokens), pieces

    short_at, long_at, tokens, pieces = asyncio.run(run())
    assert tokens == 300 and pieces  # the stream ran to its end and its reader got text
    assert short_at < 0.3 < long_at, (short_at, long_at)  # the newcomer did not wait for the stream


def test_another_pair_waits_for_the_batch_to_drain_and_its_wait_is_published() -> None:
    async def run() -> tuple[float, float, float]:
        device = Device(_backend())
        t0 = time.monotonic()
        long = device.submit(LONG, [_req(150)], [None])  # ~0.3 s of decode
        await asyncio.sleep(0.08)
        drain = device.wait_ms(Knobs("low", 8, 16))
        same = device.wait_ms(Knobs("medium", 4, 12))
        other, _ = await device.submit(Knobs("low", 8, 16), [_req(1)], [None])
        assert other[0].output_tokens == 1
        other_at = time.monotonic() - t0
        await long
        device.stop()
        return drain, same, other_at

    drain, same, other_at = asyncio.run(run())
    assert same == 0.0  # the running pair takes it at the next step
    assert 100.0 < drain < 320.0, drain  # what is left of the running batch
    assert other_at > 0.3, other_at  # one device, one batch: it ran after the stream's last step


def test_a_stream_whose_reader_left_stops_at_the_next_step() -> None:
    async def run() -> tuple[int, str, float]:
        device = Device(_backend())
        going = {"on": True}
        t0 = time.monotonic()
        fut = device.submit(LONG, [_req(500)], [lambda s: going["on"]])
        await asyncio.sleep(0.1)
        going["on"] = False  # the reader left: the sink says so at the next step, text or not
        (out,), _ = await fut
        device.stop()
        return out.output_tokens, out.finish_reason, time.monotonic() - t0

    tokens, reason, took = asyncio.run(run())
    assert reason == "cancelled" and tokens < 100 and took < 0.5, (tokens, reason, took)


def test_groups_waiting_for_a_drain_start_in_handed_in_order_and_lost_ones_last() -> None:
    """Late binding promised each group a start counting everything handed in before it, so a group
    handed in later does not overtake (even with a tighter deadline); a group that can no longer
    meet its deadline goes after every group that still can."""
    async def run() -> dict[str, float]:
        device = Device(_backend())
        other = Knobs("low", 8, 16)
        long = device.submit(LONG, [_req(60)], [None])  # ~0.12 s of decode holds the device
        await asyncio.sleep(0.03)
        now = time.monotonic()
        lost = device.submit(Knobs("low", 6, 14), [_req(2)], [None], deadline=now + 0.01)
        first = device.submit(Knobs("low", 4, 14), [_req(2)], [None], deadline=now + 60)
        tighter = device.submit(other, [_req(2)], [None], deadline=now + 1)
        began = {"lost": (await lost)[1], "first": (await first)[1], "tighter": (await tighter)[1]}
        await long
        device.stop()
        return began

    began = asyncio.run(run())
    assert began["first"] < began["tighter"] < began["lost"], began


def test_a_join_that_would_make_a_waiting_group_late_waits_instead() -> None:
    """While a group of another pair waits for the running batch to drain, a newcomer of the running
    pair joins only if its prefill (which runs at once) leaves the waiting group in time."""
    async def run() -> tuple[float, float, float]:
        device = Device(_backend())
        t0 = time.monotonic()
        long = device.submit(LONG, [_req(40, decode_ms=5.0)], [None])  # ~0.2 s of decode
        await asyncio.sleep(0.05)
        # ~150 ms of drain left + its 20 ms prefill; its deadline leaves it ~130 ms of slack, wide
        # enough that a loaded 2-core CI machine (steps overrunning their 5 ms) still counts it as
        # one that can be met (a CI run with 40 ms of slack judged it late anyway and let `slow` in)
        waiting = device.submit(Knobs("low", 8, 16), [_req(2)], [None], deadline=time.monotonic() + 0.3)
        await asyncio.sleep(0.01)
        slow = device.submit(Knobs("medium", 4, 12), [_req(2, first_ms=250.0)], [None])  # would eat the slack
        quick = device.submit(Knobs("medium", 4, 12), [_req(2, first_ms=5.0)], [None])  # fits in it
        (_, waiting_began), (_, slow_began), (_, quick_began) = await waiting, await slow, await quick
        await long
        device.stop()
        return waiting_began - t0, slow_began - t0, quick_began - t0

    waiting_at, slow_at, quick_at = asyncio.run(run())
    assert quick_at < waiting_at < slow_at, (quick_at, waiting_at, slow_at)


def test_the_wait_published_for_a_pair_counts_the_waiting_pairs_batches_before_it() -> None:
    async def run() -> tuple[float, float, float]:
        device = Device(_backend())
        long = device.submit(LONG, [_req(100)], [None])  # ~0.2 s of decode
        await asyncio.sleep(0.03)
        queued = device.submit(Knobs("low", 8, 16), [_req(20, decode_ms=4.0)], [None])  # an 80 ms batch
        await asyncio.sleep(0.01)
        drain_only = device.wait_ms(Knobs("low", 8, 16))  # joins the waiting pair's batch
        after_both = device.wait_ms(Knobs("low", 6, 14))  # waits for that batch too
        await queued
        await long
        device.stop()
        return drain_only, after_both, after_both - drain_only

    drain_only, after_both, gap = asyncio.run(run())
    assert 100 < drain_only < 200, drain_only
    assert abs(gap - 80.0) < 1.0, (drain_only, after_both)


def test_while_a_pair_waits_only_joins_that_end_within_the_batch_go_ahead() -> None:
    """Work of another pair waits for the running batch to drain; a short request of the running
    pair still joins (it ends before the batch would anyway), a long one waits: it would keep the
    batch alive and starve the waiting pair."""
    async def run() -> tuple[float, float, float, float]:
        device = Device(_backend())
        t0 = time.monotonic()
        long = device.submit(LONG, [_req(100)], [None])  # ~0.2 s of decode
        await asyncio.sleep(0.03)
        waiting = device.submit(Knobs("low", 8, 16), [_req(2)], [None])
        await asyncio.sleep(0.01)
        short = device.submit(Knobs("medium", 4, 12), [_req(5)], [None])
        too_long = device.submit(Knobs("medium", 4, 12), [_req(150)], [None])
        (_, short_began), (_, waiting_began), (_, long_began) = await short, await waiting, await too_long
        await long
        device.stop()
        return short_began - t0, waiting_began - t0, long_began - t0, 0.0

    short_at, waiting_at, too_long_at, _ = asyncio.run(run())
    assert short_at < waiting_at, (short_at, waiting_at)  # joined the running batch at once
    assert too_long_at >= waiting_at, (too_long_at, waiting_at)  # waited behind the other pair


def test_work_waiting_for_a_drain_is_bound_again_to_the_running_pair() -> None:
    """A lone request of another pair would wait ~0.3 s for the running batch to drain; its rebind
    offers the running pair's knobs, so it joins that batch between two steps and runs with them,
    and the event loop is told before its first token."""
    async def run() -> tuple[float, list[object], Knobs, float]:
        device = Device(_backend())
        t0 = time.monotonic()
        long = device.submit(LONG, [_req(150)], [None])  # ~0.3 s of decode
        await asyncio.sleep(0.05)
        told: list[object] = []
        asked: list[tuple[frozenset[tuple[int, int]], float]] = []

        def pick(pairs, drain_ms):  # type: ignore[no-untyped-def]
            asked.append((pairs, drain_ms))
            return Knobs("high", 4, 12), [_req(2, first_ms=10.0)], told.append

        work = device.work(Knobs("low", 8, 16), [_req(2)], [None])
        work.rebind = pick
        device.hand_in(work)
        (out,), began = await work.future
        moved_at = time.monotonic() - t0
        await long
        device.stop()
        assert out.output_tokens == 2 and asked[0][0] == frozenset({(4, 12)}) and 100 < asked[0][1] < 320
        return moved_at, told, work.knobs, began - t0

    moved_at, told, knobs, began = asyncio.run(run())
    assert told == [True] and knobs == Knobs("high", 4, 12)
    assert began < 0.15 and moved_at < 0.2, (began, moved_at)  # it did not wait for the drain


def test_work_whose_rebind_declines_waits_for_the_drain_with_its_knobs() -> None:
    async def run() -> tuple[float, Knobs, int]:
        device = Device(_backend())
        t0 = time.monotonic()
        long = device.submit(LONG, [_req(150)], [None])
        await asyncio.sleep(0.05)
        asked: list[object] = []
        work = device.work(Knobs("low", 8, 16), [_req(2)], [None])
        work.rebind = lambda pairs, drain_ms: asked.append(pairs)  # type: ignore[func-returns-value]
        device.hand_in(work)
        await work.future
        at = time.monotonic() - t0
        await long
        device.stop()
        return at, work.knobs, len(asked)

    at, knobs, asked = asyncio.run(run())
    assert knobs == Knobs("low", 8, 16) and asked >= 1 and at > 0.25, (at, asked)


def test_with_two_decode_slots_another_pair_starts_beside_a_long_stream_and_both_share_the_device() -> None:
    """decode_slots=2: a request of another pair opens the second slot at once instead of waiting
    for the stream's batch to drain; the two batches are stepped in turn, so the stream's decode
    stretches by the newcomer's device time, and the wait published for a third pair is the
    earlier of the two drains (stepped in turn), not the stream's."""
    async def run() -> tuple[float, float, float, float]:
        device = Device(SimulatedBackend(latency_source="table", jitter_sigma=0, decode="per_token", decode_slots=2))
        t0 = time.monotonic()
        long = device.submit(LONG, [_req(150)], [None])  # ~0.3 s of decode alone
        await asyncio.sleep(0.05)
        other = device.submit(Knobs("low", 8, 16), [_req(40, first_ms=10.0, decode_ms=3.0)], [None])
        await asyncio.sleep(0.03)
        third = device.wait_ms(Knobs("low", 6, 14))
        (_, other_began), (outs, _) = await other, await long
        device.stop()
        return other_began - t0, time.monotonic() - t0, third, outs[0].timings_ms["decode"]

    other_at, long_end, third, decode_ms = asyncio.run(run())
    assert other_at < 0.1, other_at  # it did not wait ~0.3 s for the stream
    # the stream ran 0.3 s of its own decode plus the other's prefill and 40 steps of 3 ms
    assert long_end > 0.3 + 0.1, long_end
    assert decode_ms > 300 + 100, decode_ms  # its reported decode holds the other batch's device time
    # the other batch drains first: ~40 x (3 + 2) ms in turn, minus what had run
    assert 60.0 < third < 230.0, third


def test_the_backlog_counts_only_what_is_left_of_the_prefill_in_progress() -> None:
    """A request bound while another's prefill runs waits for the rest of it, not all of it (the
    whole prefill counted until it ended made late binding flag fitting requests infeasible)."""
    async def run() -> tuple[float, float, float, float, float]:
        device = Device(_backend())
        first = device.submit(LONG, [_req(1, first_ms=400.0)], [None])  # one 400 ms prefill
        queued = device.backlog_ms()  # handed in, the device not yet at it: all of it
        await asyncio.sleep(0.25)
        during = device.backlog_ms()  # ~250 ms of it has run
        # On a replica running at twice its table the same prefill has ~800 - 250 ms to go: what
        # has run is real time, taken off the scaled figure.
        slow = device.backlog_ms(scale=2.0)
        second = device.submit(Knobs("low", 8, 16), [_req(1, first_ms=100.0)], [None])
        both = device.backlog_ms()  # the rest of the first + all of the second
        await first
        await second
        after = device.backlog_ms()
        device.stop()
        return queued, during, slow, both, after

    queued, during, slow, both, after = asyncio.run(run())
    assert queued == 400.0, queued
    assert 50.0 < during < 200.0, during  # 400 - ~250, with room for a slow host
    assert 400.0 + during - 5.0 < slow < 400.0 + during + 5.0, (during, slow)
    assert during + 95.0 < both < during + 130.0, (during, both)
    assert after == 0.0


def _noting(events: list[str], tag: str) -> Callable[[str], bool]:
    """A stream sink that notes `tag` at each piece (its reader never leaves)."""
    def sink(text: str) -> bool:
        events.append(tag)
        return True
    return sink


def test_work_handed_in_during_one_batchs_step_joins_before_the_other_batch_steps() -> None:
    """Two batches take turns, one step each; work that arrives during a step is admitted before the
    next batch's step, not after a whole round (with a long stream of another pair beside it, a
    newcomer's prefill waited for a step of every batch). Order only, no timing: the newcomer is
    handed in from inside a step of batch A once B runs, and its first token must come before B
    steps again."""
    events: list[str] = []

    async def run() -> None:
        device = Device(SimulatedBackend(latency_source="table", jitter_sigma=0, decode="per_token", decode_slots=2))
        newcomer = device.work(LONG, [_req(1, first_ms=1.0)], [_noting(events, "new")])

        def a_sink(text: str) -> bool:
            events.append("A")
            if "B" in events and "handed" not in events:  # B's batch runs: hand in mid-step of A's
                events.append("handed")
                device.hand_in(newcomer)  # on the device thread
            return True

        a = device.submit(LONG, [_req(8, first_ms=1.0, decode_ms=5.0)], [a_sink])
        await asyncio.sleep(0.0)
        b = device.submit(Knobs("low", 8, 16), [_req(8, first_ms=1.0, decode_ms=5.0)],
                          [_noting(events, "B")])
        await asyncio.gather(a, b, newcomer.future)
        device.stop()

    asyncio.run(run())
    assert events.index("new") == events.index("handed") + 1, events


def test_the_pair_of_work_handed_in_is_busy_from_the_hand_in_until_its_batch_is_published() -> None:
    """Late binding's pair affinity must see work handed in a moment ago: two long streams bound at
    once on an idle device otherwise took two pairs and held both decode slots."""
    async def run() -> list[frozenset[tuple[int, int]]]:
        device = Device(SimulatedBackend(latency_source="table", jitter_sigma=0, decode="per_token", decode_slots=2))
        seen = [device.view().busy_pairs]
        work = device.work(LONG, [_req(30, first_ms=50.0, decode_ms=5.0)], [None])
        device.hand_in(work)
        seen.append(device.view().busy_pairs)  # at once, before the device thread takes it
        await asyncio.sleep(0.1)
        seen.append(device.view().busy_pairs)  # its batch runs
        await work.future
        await asyncio.sleep(0.05)
        seen.append(device.view().busy_pairs)
        device.stop()
        return seen

    idle, handed, running, done = asyncio.run(run())
    assert idle == frozenset() and done == frozenset(), (idle, done)
    assert handed == {LONG.pair} and running == {LONG.pair}, (handed, running)
