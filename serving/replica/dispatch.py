"""Late binding: a model replica chooses a request's knobs when the request leaves its queue.

The router resolves a budget with an estimate of the wait ahead; the replica knows the wait once it
is over. With each request the router sends a `DispatchPlan`: the rungs of the table's ladder
(controller.ladder) that the budget could use with no wait at all, fastest first. When the request's
backend call starts, the replica takes the highest rung that fits the time really left, then steps
down while that would
- make a request waiting behind it miss, though it could still be met with its fastest rung
  (earliest deadline first: the waiting list is the deadline gate's), or
- with a blocking budget set, cost more expected misses among the requests that arrive while it
  runs than the budget allows (`BlockingGuard`): a non-preemptive server makes every newcomer wait
  for the call in progress, so one long call can sink a tight budget that arrives just after it.
And with `stay` given (`model.pair_switch_min_gain`), it keeps a knob pair the device is running
(or has work waiting for) when one of that pair's options fits and another pair would gain at most
that much expected accuracy: the engine runs one decode batch at a time, so a request of another
pair waits for the running batch to drain and then holds every newcomer of the running pair for its
whole call (on the H100, such switches waited 93 ms median against 23 for the running pair,
docs/BENCHMARKS.md).
Pure: no Ray, time is an argument.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from controller.budget import Budget
from serving.errors import ServingConfigError
from serving.wire import DispatchPlan, PlanOption


class BlockingGuard:
    """Expected misses that a call of `service_ms` causes among the requests arriving while it runs.

    A request arriving u ms into a call of S ms waits S - u before it can start; it misses if that
    exceeds its slack (its model budget minus its fastest rung's expected time). With newcomers
    finding this replica busy at rate r per busy ms, and slacks like the recent ones, expected
    misses = r x mean(max(0, S - slack)). The rate is measured where it matters: arrivals that came
    while a call ran, over the time calls ran (last `horizon_s`). With one replica that is the
    arrival rate; with several, Serve sends newcomers to an idle replica when it can, and the rate
    a busy one sees is lower, so it may run longer calls. A client that waits for each answer never
    finds the replica busy, and is never limited.
    """

    def __init__(self, miss_budget: float, horizon_s: float = 10.0, window: int = 256,
                 min_busy_s: float = 1.0) -> None:
        if not (math.isfinite(miss_budget) and miss_budget > 0):
            raise ServingConfigError(
                f"model.blocking_miss_budget={miss_budget!r} must be a finite number > 0"
            )
        self.miss_budget, self.horizon_s, self.min_busy_s = miss_budget, horizon_s, min_busy_s
        self._busy_arrivals: deque[float] = deque(maxlen=4096)  # when a newcomer found it busy
        self._calls: deque[tuple[float, float]] = deque(maxlen=4096)  # (ended, seconds it ran)
        self._slacks: deque[float] = deque(maxlen=window)

    def arrived(self, now: float, slack_ms: float, busy: bool) -> None:
        if busy:
            self._busy_arrivals.append(now)
        if math.isfinite(slack_ms):
            self._slacks.append(slack_ms)

    def ran(self, started: float, ended: float) -> None:
        if ended >= started:
            self._calls.append((ended, ended - started))

    def rate_per_ms(self, now: float) -> float:
        """Newcomers per ms that find this replica busy (over at least `min_busy_s` of busy time,
        so that a replica that has hardly run yet does not divide by almost nothing)."""
        while self._busy_arrivals and now - self._busy_arrivals[0] > self.horizon_s:
            self._busy_arrivals.popleft()
        while self._calls and now - self._calls[0][0] > self.horizon_s:
            self._calls.popleft()
        busy_s = sum(d for _, d in self._calls)
        return len(self._busy_arrivals) / max(busy_s, self.min_busy_s) / 1000

    def expected_misses(self, service_ms: float, now: float) -> float:
        if not self._slacks:
            return 0.0
        rate = self.rate_per_ms(now)
        return rate * sum(max(0.0, service_ms - s) for s in self._slacks) / len(self._slacks)

    def too_long(self, service_ms: float, now: float) -> bool:
        return self.expected_misses(service_ms, now) > self.miss_budget


@dataclass(frozen=True)
class Waiting:
    """A request queued behind the call being chosen: ms left to its deadline, and its fastest
    option's budgeted latency (`first_ms`, what its deadline is compared with) and expected whole
    call (`call_ms`, first token + decode: what the requests after it wait for)."""

    left_ms: float
    first_ms: float
    call_ms: float

    def shifted(self, ms: float) -> Waiting:
        """The same request once `ms` more of the replica's time is committed ahead of it."""
        return Waiting(self.left_ms - ms, self.first_ms, self.call_ms)


def leaves_room(own_call_ms: float, behind: Sequence[Waiting]) -> bool:
    """Whether every waiting request that could still be met (earliest deadline first, each with its
    fastest option) is still met after a call of `own_call_ms`."""
    t = own_call_ms
    for w in behind:
        if w.first_ms > w.left_ms:
            continue  # lost already; it must not drag others down with it
        if t + w.first_ms > w.left_ms:
            return False
        t += w.call_ms
    return True


@dataclass(frozen=True)
class Choice:
    index: int  # into plan.options
    fits: bool  # the chosen option fits the time left (else it is the fastest, late)
    left_ms: float
    guarded: bool = False  # the blocking guard chose a shorter option than the time left allowed
    kept_pair: bool = False  # the running knob pair's option, over a little more accurate one of another


def call_ms(option: PlanOption, tokens: int) -> float:
    """Expected time the replica is busy with this option: first token + decode of `tokens`."""
    return option.service_ms + (option.decode_ms_per_token or 0.0) * tokens


def choose(
    plan: DispatchPlan,
    left_ms: float,
    *,
    tokens: int = 0,
    scale: float = 1.0,
    behind: Sequence[Waiting] = (),
    too_long: Callable[[float], bool] | None = None,
    start_ms: Callable[[PlanOption], float] | None = None,
    stay: Callable[[PlanOption], bool] | None = None,
    switch_min_gain: float = 0.0,
) -> Choice:
    """`tokens`: the request's max_new_tokens (its call decodes them before the next call starts);
    `scale`: the replica's measured / table first-token time (>= 1 when it runs slow), applied to
    every option; `too_long(call_ms)`: the blocking guard, or None; `start_ms(option)`: how long
    the option would wait before it can start (the device runs a decode batch of another knob
    pair: serving.replica.device.wait_ms), or None for no wait; `stay(option)`: whether the option
    is of the pair the device runs (None: no preference), and `switch_min_gain` the expected
    accuracy another pair must add to be taken over the best fitting option of that pair."""
    threshold = Budget(left_ms, plan.tolerance).threshold_ms
    wait = start_ms if start_ms is not None else (lambda o: 0.0)
    # A wait can break the ladder's order (a slower option whose pair is running may start at once),
    # so this takes the most accurate option that fits, else the one that comes first; without
    # waits the options that fit are a prefix of the ladder and this is its last rung.
    ready = [o.latency_ms * scale + wait(o) for o in plan.options]
    fitting = [j for j, ms in enumerate(ready) if ms <= threshold]
    if not fitting:
        return Choice(min(range(len(ready)), key=ready.__getitem__), False, left_ms)
    i = fitting[-1]
    kept = False
    if stay is not None and not stay(plan.options[i]):
        held = _kept_pair(plan, fitting, i, stay, switch_min_gain)
        i, kept = held, held != i

    def lower() -> int | None:
        below = [j for j in fitting if j < i]
        return below[-1] if below else None

    while not leaves_room(call_ms(plan.options[i], tokens) * scale + wait(plan.options[i]), behind):
        if (j := lower()) is None:
            break
        i = j
    unguarded = i
    while too_long is not None and too_long(call_ms(plan.options[i], tokens) * scale):
        if (j := lower()) is None:
            break
        i = j
    return Choice(i, True, left_ms, guarded=i < unguarded, kept_pair=kept)


def _kept_pair(plan: DispatchPlan, fitting: list[int], best: int, stay: Callable[[PlanOption], bool],
               min_gain: float) -> int:
    """The best fitting option of the running pair instead of `best` (another pair's), unless none
    fits or `best` gains more than `min_gain` expected accuracy over it (or an accuracy is unknown)."""
    kept = [j for j in fitting if stay(plan.options[j])]
    if not kept:
        return best
    a, b = plan.options[best].accuracy, plan.options[kept[-1]].accuracy
    if a is None or b is None or a - b > min_gain:
        return best
    return kept[-1]


def rebind_while_waiting(plan: DispatchPlan, current: int, left_ms: float, *, scale: float, drain_ms: float,
                         pairs: frozenset[tuple[int, int]]) -> tuple[int, bool] | None:
    """For a request bound to option `current` that cannot start until the device's running batch
    drains (`drain_ms`): the most accurate option of a running pair (`pairs`: it joins that batch
    now) that fits the time left, if its own option would not fit once the batch has drained; when
    none fits, the fastest running-pair option (it is late either way: joining now answers sooner
    and spares the device a switch of pair for a lost request). (option, whether it fits), or None
    to keep waiting. Late binding chose `current` when the request left the replica's queue, but
    on the device it may still wait behind other pairs' batches (on the H100-like CPU bench, 60-110
    ms after the choice): this is the choice made again when the device could start it."""
    threshold = Budget(left_ms, plan.tolerance).threshold_ms
    if plan.options[current].latency_ms * scale + drain_ms <= threshold:
        return None  # it still fits after the drain: keep the more accurate choice
    running = [j for j, o in enumerate(plan.options) if j != current and o.knobs.pair in pairs]
    fits = [j for j in running if plan.options[j].latency_ms * scale <= threshold]
    if fits:
        return fits[-1], True
    return (running[0], False) if running else None
