"""Late binding at the replica (serving.replica.dispatch): plans on the wire, the choice for the time left,
the requests waiting behind, and the blocking guard."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest

from controller.knobs import Knobs
from controller.ladder import ladder
from serving.replica.deadline_gate import DeadlineGate
from serving.replica.dispatch import BlockingGuard, Waiting, choose, leaves_room
from serving.wire import DispatchPlan, PlanError
from serving.wire import PlanOption as Option
from tests.support.tables import synthetic_table


def _plan(*latencies: float, tolerance: float = 0.0) -> DispatchPlan:
    tiers = ("low", "medium", "high")
    return DispatchPlan(
        tuple(Option(Knobs(tiers[i % 3], 4, 12 + 2 * (i // 3)), ms, ms * 0.9, 1.0) for i, ms in enumerate(latencies)),
        tolerance,
    )


def test_plan_from_rungs_is_checked_as_it_is() -> None:
    table = synthetic_table(latency_scale=0.5, decode_ms_per_token=2.0)
    plan = DispatchPlan.from_rungs(ladder(table), 0.05)
    assert plan.checked() is plan
    assert plan.fastest_ms == min(o.latency_ms for o in plan.options)


def _bad_knobs(tier: object, top_k: object, blocks: object) -> Knobs:
    """Knobs as an unpickled object arrives: __post_init__ never ran, so anything can be inside."""
    k = object.__new__(Knobs)
    for name, value in (("tier", tier), ("top_k", top_k), ("num_active_blocks", blocks)):
        object.__setattr__(k, name, value)
    return k


def _option(knobs: object = None, latency: object = 50.0, service: object = 45.0, decode: object = None) -> Option:
    return Option(knobs if knobs is not None else Knobs("low", 4, 12), latency, service, decode)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "plan",
    [
        DispatchPlan((), 0.0),
        DispatchPlan([_option()], 0.0),  # type: ignore[arg-type]  # a list, not a tuple
        DispatchPlan(("x",), 0.0),  # type: ignore[arg-type]
        DispatchPlan((_option(latency=math.nan),), 0.0),
        DispatchPlan((_option(latency=math.inf),), 0.0),
        DispatchPlan((_option(latency=-1.0),), 0.0),
        DispatchPlan((_option(latency=True),), 0.0),
        DispatchPlan((_option(service="45"),), 0.0),
        DispatchPlan((_option(decode=math.nan),), 0.0),
        DispatchPlan((_option(knobs={"tier": "low"}),), 0.0),
        DispatchPlan((_option(knobs=_bad_knobs("ultra", 4, 12)),), 0.0),
        DispatchPlan((_option(knobs=_bad_knobs("low", "4", 12)),), 0.0),
        DispatchPlan((_option(knobs=_bad_knobs("\ud800", 4, 12)),), 0.0),
        DispatchPlan((_option(latency=60.0), _option(Knobs("high", 8, 16), latency=50.0)), 0.0),  # not sorted
        DispatchPlan((_option(),), 2.0),
        DispatchPlan((_option(),), math.nan),
        DispatchPlan((_option(),) * 257, 0.0),
    ],
)
def test_malformed_plans_are_refused_with_a_plan_error(plan: DispatchPlan) -> None:
    with pytest.raises(PlanError):
        plan.checked()



def test_choose_takes_the_highest_option_that_fits_the_time_left() -> None:
    plan = _plan(40, 60, 80, 100)
    assert choose(plan, 85).index == 2 and choose(plan, 85).fits
    assert choose(plan, 500).index == 3
    late = choose(plan, 30)  # nothing fits: the fastest, flagged
    assert late.index == 0 and not late.fits
    assert choose(_plan(40, 60, 80, tolerance=0.1), 74).index == 2  # 74 x 1.1 >= 80
    assert choose(plan, 85, scale=1.5).index == 0  # a replica running 1.5x slow: 60 x 1.5 > 85


def test_choose_leaves_room_for_the_requests_waiting_behind() -> None:
    plan = _plan(40, 60, 80, 100)  # expected calls 0.9 x latency + 1 ms per token
    # Alone: 100 fits 120 ms. Behind it, one with 150 ms left whose fastest is 40: 91 + 40 <= 150 ok.
    assert choose(plan, 120, behind=[Waiting(150, 40, 37)]).index == 3
    # One with 110 ms left: 91 + 40 > 110, 55 + 40 <= 110 -> the 60 ms option.
    assert choose(plan, 120, behind=[Waiting(110, 40, 37)]).index == 1
    # A waiting request that cannot be met anyway does not drag this one down.
    assert choose(plan, 120, behind=[Waiting(20, 40, 37)]).index == 3


def test_the_room_left_counts_the_decode_of_the_call_not_only_its_first_token() -> None:
    plan = _plan(40, 60, 80, 100)
    # 16 tokens at 1 ms each: the 80 ms option keeps the replica 72 + 16 = 88 ms; 88 + 40 > 120.
    assert choose(plan, 200, tokens=0, behind=[Waiting(120, 40, 37)]).index == 2
    assert choose(plan, 200, tokens=16, behind=[Waiting(120, 40, 37)]).index == 1


def test_leaves_room_counts_every_waiting_request_in_deadline_order() -> None:
    assert leaves_room(50, [Waiting(100, 40, 40), Waiting(140, 40, 40)])
    assert not leaves_room(50, [Waiting(100, 40, 40), Waiting(120, 40, 40)])
    # The second waits for the first's whole call (decode included), not only its first token.
    assert not leaves_room(50, [Waiting(100, 40, 60), Waiting(140, 40, 40)])
    assert leaves_room(50, [])
    assert Waiting(100, 40, 60).shifted(30) == Waiting(70, 40, 60)


def test_blocking_guard_prices_a_call_by_the_misses_it_causes() -> None:
    g = BlockingGuard(miss_budget=0.01, horizon_s=10.0)
    assert g.expected_misses(100, 0.0) == 0.0  # nothing known yet: no limit
    for i in range(100):  # busy all the time with 100 ms calls; 10 newcomers per second, slack 40 ms
        g.ran(i * 0.1, (i + 1) * 0.1)
        g.arrived(i * 0.1 + 0.05, 40.0, busy=True)
    now = 9.99
    assert g.rate_per_ms(now) == pytest.approx(0.01, rel=0.02)
    # A 60 ms call: each arrival during it waits up to 60 - u ms; those with u < 20 ms miss.
    assert g.expected_misses(60, now) == pytest.approx(0.01 * 20, rel=0.02)
    assert g.expected_misses(40, now) == 0.0
    assert g.too_long(60, now) and not g.too_long(40.5, now)
    plan = _plan(40, 60, 80)
    choice = choose(plan, 500, too_long=lambda ms: g.too_long(ms, now))
    assert choice.index == 0 and choice.guarded
    # Arrivals stop: after the horizon the rate is gone and so is the limit.
    later = choose(plan, 500, too_long=lambda ms: g.too_long(ms, 30.0))
    assert g.rate_per_ms(30.0) == 0.0 and later.index == 2 and not later.guarded


def test_a_client_that_waits_for_each_answer_is_never_limited() -> None:
    g = BlockingGuard(miss_budget=0.01)
    for i in range(50):  # sequential: each request arrives after the previous call ended
        g.arrived(i * 0.1, 10.0, busy=False)
        g.ran(i * 0.1 + 0.001, i * 0.1 + 0.09)
    assert g.rate_per_ms(5.0) == 0.0 and not g.too_long(1000, 5.0)


def test_blocking_guard_counts_only_newcomers_that_found_the_replica_busy() -> None:
    """With several replicas, Serve sends most newcomers to an idle one: a busy replica sees fewer."""
    g = BlockingGuard(miss_budget=0.01, horizon_s=10.0)
    for i in range(100):  # 10 arrivals per second; calls of 50 ms every 100 ms: busy half the time
        g.ran(i * 0.1, i * 0.1 + 0.05)
        g.arrived(i * 0.1 + 0.07, 40.0, busy=(i % 5 == 0))  # 1 in 5 found it busy
    now = 10.0
    # 20 newcomers found it busy over ~5 s of calls: 4 per busy second, not the arrival rate of 10.
    assert g.rate_per_ms(now) == pytest.approx(20 / 5.0 / 1000)
    assert g.expected_misses(60, now) == pytest.approx(g.rate_per_ms(now) * 20)


@pytest.mark.parametrize("bad", [0, -0.1, math.nan, math.inf])
def test_blocking_guard_refuses_a_meaningless_budget(bad: float) -> None:
    with pytest.raises(ValueError, match="miss_budget"):
        BlockingGuard(bad)


def test_deadline_gate_lists_who_waits_with_their_fastest_option() -> None:
    async def run() -> list[tuple[float, object]]:
        gate, release = DeadlineGate(slots=1), asyncio.Event()

        async def holder() -> None:
            async with gate.admitted(0.0):
                await release.wait()

        async def waiter(deadline: float, fastest: float | None) -> None:
            async with gate.admitted(deadline, fastest):
                pass

        tasks = [asyncio.create_task(holder())]
        await asyncio.sleep(0)
        tasks += [asyncio.create_task(waiter(d, f)) for d, f in ((9.0, 40.0), (1.0, None), (5.0, 45.0))]
        await asyncio.sleep(0)
        behind = gate.behind()
        release.set()
        await asyncio.gather(*tasks)
        assert gate.behind() == []
        return behind

    assert asyncio.run(run()) == [(1.0, None), (5.0, 45.0), (9.0, 40.0)]


def _pair_plan() -> DispatchPlan:
    """A ladder that crosses knob pairs, as the H100 table's does: fastest first, more accurate each."""
    rows = [(Knobs("low", 4, 12), 14.0, 0.41), (Knobs("low", 8, 16), 19.0, 0.589),
            (Knobs("medium", 8, 16), 35.0, 0.703), (Knobs("high", 8, 14), 50.7, 0.728),
            (Knobs("high", 8, 16), 55.0, 0.74)]
    return DispatchPlan(tuple(Option(k, ms, ms * 0.9, 4.0, acc) for k, ms, acc in rows), 0.0)


def _running(*pairs: tuple[int, int]):  # type: ignore[no-untyped-def]
    return lambda o: (o.knobs.top_k, o.knobs.num_active_blocks) in pairs


def test_late_binding_keeps_the_running_pair_unless_another_gains_more_than_the_setting() -> None:
    plan = _pair_plan()
    # 52 ms left: high_8_14 (0.728) fits, high_8_16 does not; (8, 16) runs: medium_8_16 (0.703) is
    # 0.025 less accurate. At a 0.03 threshold the running pair is kept; at 0.02 the switch is worth it.
    kept = choose(plan, 52, stay=_running((8, 16)), switch_min_gain=0.03)
    assert plan.options[kept.index].knobs == Knobs("medium", 8, 16) and kept.kept_pair and kept.fits
    switched = choose(plan, 52, stay=_running((8, 16)), switch_min_gain=0.02)
    assert plan.options[switched.index].knobs == Knobs("high", 8, 14) and not switched.kept_pair
    # No preference given (the setting unset, or an idle device): accuracy alone.
    assert choose(plan, 52).index == switched.index
    # The best option is of the running pair anyway: nothing to keep.
    same = choose(plan, 60, stay=_running((8, 16)), switch_min_gain=0.5)
    assert plan.options[same.index].knobs == Knobs("high", 8, 16) and not same.kept_pair


def test_a_switch_is_taken_when_no_option_of_the_running_pair_fits() -> None:
    plan = _pair_plan()
    # 16 ms left: only low_4_12 fits; (8, 16) runs but none of its options fits.
    c = choose(plan, 16, stay=_running((8, 16)), switch_min_gain=1.0)
    assert plan.options[c.index].knobs == Knobs("low", 4, 12) and c.fits and not c.kept_pair


def test_an_option_of_unknown_accuracy_is_not_traded_for_the_running_pair() -> None:
    plan = _pair_plan()
    blind = DispatchPlan(tuple(Option(o.knobs, o.latency_ms, o.service_ms, o.decode_ms_per_token)
                               for o in plan.options), 0.0)
    c = choose(blind, 52, stay=_running((8, 16)), switch_min_gain=1.0)
    assert blind.options[c.index].knobs == Knobs("high", 8, 14) and not c.kept_pair


@pytest.mark.parametrize("accuracy", [math.nan, math.inf, -0.1, 1.5])
def test_a_plan_option_with_a_meaningless_accuracy_is_refused(accuracy: float) -> None:
    option = Option(Knobs("low", 4, 12), 10.0, 9.0, 1.0, accuracy)
    with pytest.raises(PlanError, match="accuracy"):
        DispatchPlan((option,), 0.0).checked()


def test_plans_carry_the_table_accuracy_of_each_rung() -> None:
    table = synthetic_table(latency_scale=0.5, decode_ms_per_token=2.0)
    rungs = ladder(table)
    plan = DispatchPlan.from_rungs(rungs, 0.05)
    assert [o.accuracy for o in plan.options] == [r.stats.accuracy for r in rungs]
    assert plan.checked() is plan


def test_a_request_waiting_for_a_drain_is_bound_again_only_when_its_own_option_would_miss() -> None:
    from serving.replica.dispatch import rebind_while_waiting

    plan = _pair_plan()  # low_4_12 14, low_8_16 19, medium_8_16 35, high_8_14 50.7, high_8_16 55 ms
    running = frozenset({(8, 16)})
    # Bound to high_8_14 (index 3), 80 ms left, the (8, 16) batch drains in 20 ms: 50.7 + 20 fits: wait.
    assert rebind_while_waiting(plan, 3, 80.0, scale=1.0, drain_ms=20.0, pairs=running) is None
    # It drains in 40 ms: 90.7 > 80, so the most accurate (8, 16) option that fits now: high_8_16.
    assert rebind_while_waiting(plan, 3, 80.0, scale=1.0, drain_ms=40.0, pairs=running) == (4, True)
    # 40 ms left: medium_8_16 (35) is the most that fits; a replica running 1.2x slow: low_8_16.
    assert rebind_while_waiting(plan, 3, 40.0, scale=1.0, drain_ms=40.0, pairs=running) == (2, True)
    assert rebind_while_waiting(plan, 3, 40.0, scale=1.2, drain_ms=40.0, pairs=running) == (1, True)
    # Nothing of the running pairs fits: it is late either way, so it joins with the running pair's
    # fastest option (no switch of pair for a lost request), flagged as not fitting.
    assert rebind_while_waiting(plan, 3, 10.0, scale=1.0, drain_ms=40.0, pairs=running) == (1, False)
    # No running pair in the plan: keep waiting.
    assert rebind_while_waiting(plan, 3, 80.0, scale=1.0, drain_ms=40.0, pairs=frozenset({(6, 12)})) is None


def test_a_plan_object_is_checked_once_and_a_bad_one_every_time(monkeypatch: pytest.MonkeyPatch) -> None:
    from serving.wire import CheckedPlans

    calls: list[int] = []
    real = DispatchPlan.checked

    def counting(self: DispatchPlan) -> DispatchPlan:
        calls.append(id(self))
        return real(self)

    monkeypatch.setattr(DispatchPlan, "checked", counting)
    plans = CheckedPlans(size=2)
    good = _plan(10.0, 20.0)
    assert plans.checked(good) is good and plans.checked(good) is good
    assert len(calls) == 1  # the same object: checked once
    twin = _plan(10.0, 20.0)  # equal, but another object (as one that crossed a process boundary)
    assert plans.checked(twin) is twin and len(calls) == 2
    bad = DispatchPlan((Option(Knobs("low", 4, 12), float("nan"), 1.0, None),), 0.0)
    for _ in range(2):  # never remembered: refused every time
        with pytest.raises(PlanError):
            plans.checked(bad)
    assert len(calls) == 4
    third = _plan(5.0)
    plans.checked(third)  # the dict was full: cleared, so the first is checked again
    plans.checked(good)
    assert len(calls) == 6


def test_the_router_sends_one_plan_object_per_ladder_prefix() -> None:
    from serving.config import ServingConfig
    from serving.ingress.admission import QueueAdmission
    from serving.ingress.answer import Answer

    config = ServingConfig.model_validate(
        {"controller": {"store": "s"},
         "budget": {"queue_aware": True, "late_binding": True, "default_budget_ms": 250}})
    admission = QueueAdmission(config, None)
    table = synthetic_table(latency_scale=0.5, decode_ms_per_token=2.0)
    rungs = ladder(table)

    def plan_for(budget_ms: float, ladder_: tuple[Any, ...] = rungs) -> DispatchPlan:
        d = table.resolve(budget_ms)
        got_rungs, plan = admission.plan(Answer(d, d.budget_ms, d.tolerance, rungs=ladder_))
        assert plan is not None and [o.latency_ms for o in plan.options] == [r.latency_ms for r in got_rungs]
        return plan

    first = plan_for(60.0)
    assert plan_for(60.0) is first  # same ladder, same prefix: the same object
    wider = plan_for(400.0)
    assert wider is not first and len(wider.options) > len(first.options)
    new_table_ladder = ladder(table)  # a new table version: another ladder object, a new plan
    again = plan_for(60.0, new_table_ladder)
    assert again is not first and again == first
