"""The device's order and the wait it promises (serving.replica.device_schedule), by hand."""

from __future__ import annotations

import math

from serving.replica.device_schedule import Queued, in_order, interleaved, lanes, leaves_room, starts, wait_ms

A, B, C = (4, 12), (8, 16), (6, 14)


def test_work_that_cannot_meet_its_deadline_goes_after_the_rest_in_handed_in_order() -> None:
    queued = [Queued(A, 20, 30, left_ms=10), Queued(B, 20, 30), Queued(C, 20, 30, left_ms=100), Queued(A, 5, 30, 1)]
    assert [q.lost for q in queued] == [True, False, False, True]
    assert in_order(queued) == [1, 2, 0, 3]


def test_batches_open_in_the_order_their_pair_first_appears_and_each_lasts_its_prefills_and_decode() -> None:
    queued = [Queued(B, 20, 40), Queued(C, 10, 30), Queued(B, 15, 60)]
    # after a 50 ms drain: B's batch prefills 20 then 15 and decodes 60 (its longest); then C's
    assert starts(queued, [50.0]) == [50.0, 50.0 + 20 + 15 + 60, 70.0]


def test_a_join_must_leave_every_waiting_work_that_can_still_be_met_in_time() -> None:
    waiting = [Queued(B, 20, 40, left_ms=100)]  # starts after a 50 ms drain, first token at 70: 30 ms slack
    assert leaves_room(waiting, [50.0], 30.0)
    assert not leaves_room(waiting, [50.0], 31.0)
    # lost work, or work already late without the join, does not block joins
    assert leaves_room([Queued(B, 20, 40, left_ms=10)], [50.0], 500.0)
    assert leaves_room([Queued(B, 20, 40, left_ms=60)], [50.0], 500.0)
    assert leaves_room([Queued(B, 20, 40, left_ms=math.inf)], [50.0], 500.0)


def test_the_wait_for_a_pair() -> None:
    waiting = [Queued(B, 20, 40, left_ms=100), Queued(C, 10, 30, left_ms=200)]
    common = {"first_ms": 10.0, "opens": False}
    # the running pair: joins at once when it ends within the batch and leaves room...
    assert wait_ms(waiting, [50.0], A, running=True, joins=True, **common) == 0.0
    # ...else it waits for the drain and both waiting batches
    assert wait_ms(waiting, [50.0], A, running=True, joins=False, **common) == 50 + 40 + 30
    assert wait_ms(waiting, [50.0], A, running=True, joins=True, first_ms=35.0, opens=False) == 50 + 40 + 30
    # a waiting pair: the drain and the batches that open before its own
    assert wait_ms(waiting, [50.0], B, running=False, joins=False, **common) == 50
    assert wait_ms(waiting, [50.0], C, running=False, joins=False, **common) == 50 + 40
    # nothing runs or waits: it opens a batch at once; with nothing waiting the running pair joins
    assert wait_ms([], [0.0], C, running=False, joins=False, first_ms=10.0, opens=True) == 0.0
    assert wait_ms([], [50.0], A, running=True, joins=False, **common) == 0.0
    # lost work waits behind everything else: it adds nothing
    assert wait_ms([Queued(B, 20, 40, left_ms=5)], [50.0], C, running=False, joins=False, **common) == 50.0


def test_batches_stepped_in_turn_drain_at_the_pace_of_all_of_them() -> None:
    # alone: 100 steps of 2 ms and 10 steps of 5 ms; in turn, the first waits for the second's 10
    # steps too, and the second for 10 of the first's
    assert interleaved([(200.0, 100), (50.0, 10)]) == [200.0 + 10 * 5.0, 50.0 + 10 * 2.0]
    assert interleaved([(200.0, 100)]) == [200.0]
    assert interleaved([]) == []
    assert interleaved([(0.0, 0), (40.0, 4)]) == [0.0, 40.0]
    # a device's slots: the running batches' drains, then 0 for each free slot
    assert lanes([250.0], 2) == [250.0, 0.0] and lanes([250.0], 1) == [250.0] and lanes([], 2) == [0.0, 0.0]


def test_with_two_lanes_a_waiting_batch_opens_in_the_lane_that_frees_first() -> None:
    queued = [Queued(B, 20, 40), Queued(C, 10, 30), Queued(A, 5, 10)]
    # lanes free in 300 (a long stream) and 50 ms: B opens at 50, holds that lane to 110; C opens
    # at 110 in the same lane (the stream's is still busy), A at 150
    assert starts(queued, [300.0, 50.0]) == [50.0, 110.0, 150.0]
    # a free lane: the first waiting batch opens at once
    assert starts(queued, [300.0, 0.0]) == [0.0, 60.0, 100.0]
    waiting = [Queued(B, 20, 40, left_ms=100)]
    common = {"running": False, "joins": False, "first_ms": 10.0, "opens": False}
    # a newcomer of another pair waits for the short lane and B's decode, not for the stream
    assert wait_ms(waiting, [300.0, 50.0], C, **common) == 50.0 + 40.0
    assert wait_ms(waiting, [300.0, 50.0], B, **common) == 50.0
    # the stream's pair joins its batch when it leaves room for B (B starts at 50, meets at 70 of 100)
    assert wait_ms(waiting, [300.0, 50.0], A, running=True, joins=True, first_ms=30.0, opens=False) == 0.0
    assert wait_ms(waiting, [300.0, 50.0], A, running=True, joins=True, first_ms=31.0, opens=False) == 90.0
    # a free lane and nothing waiting: it opens at once
    assert wait_ms([], [300.0, 0.0], C, running=False, joins=False, first_ms=10.0, opens=True) == 0.0


def test_an_idle_device_starts_every_pair_at_once() -> None:
    """What MoEModel._bind relies on to skip the schedule per option when nothing runs or waits."""
    for slots in (1, 2):
        for pair in ((4, 12), (8, 16)):
            for first_ms, tokens_fit in ((0.0, False), (45.0, True)):
                assert wait_ms([], lanes([], slots), pair, running=False, joins=tokens_fit, first_ms=first_ms,
                               opens=True) == 0.0
