"""One device, step by step: the thread that owns a replica's backend.

A GPU runs one thing at a time, so a whole call (prefill + every decode step) that holds the device
makes every newcomer wait for its last token: two 512-token streams would make every other budget
infeasible. Here the device runs *sessions* (a decode batch of one knob pair, `Backend.open_session`)
a step at a time, and work that arrives between two steps joins a running session when it can
(its prefill runs at that step boundary, so its first token waits for one decode step, not for a
whole call). A backend with more than one decode slot (`max_sessions`) holds batches of different
pairs at once and steps them in turn. Work that cannot join (another knob pair while the backend
holds its most sessions, or no room left) waits until it can, in the order
serving.replica.device_schedule gives (handed-in order, lost work last); late binding is told how
long that is (`wait_ms`, from the same schedule) and may pick the running pair's option instead.

The event loop hands work in (`submit`, a future per group of members with equal knobs) and never
waits on the device; the device thread hands results back with `call_soon_threadsafe`.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from controller.knobs import Knobs
from serving.replica.backends.base import Backend, ModelOutput, ModelRequest, OnText, Session
from serving.replica.device_schedule import Queued, in_order, interleaved, lanes, leaves_room, starts, wait_ms

log = logging.getLogger("ray.serve")


Alternative = tuple[Knobs, list[ModelRequest], Callable[[bool], None]]
# Late binding again on the device thread: rebind(pairs, wait_ms) gives other knobs (and the
# requests as they run with them) that would join a running batch of one of `pairs` now, and the
# callback that tells the event loop: True before the join is tried (so that the first token,
# which the join may already send, is reported with the new knobs), False if no batch took them
# after all; None: keep waiting. wait_ms: how long it would wait for its own knobs' batch (the
# schedule's start: the drain and the waiting pairs' batches before it).
Rebind = Callable[[frozenset[tuple[int, int]], float], Alternative | None]


def prefill_ms(requests: Sequence[ModelRequest]) -> float:
    """Requests' table first tokens: the device's time to prefill them, one after another."""
    return sum(r.expected_ms or 0.0 for r in requests)


@dataclass
class Work:
    knobs: Knobs
    requests: list[ModelRequest]
    sinks: list[OnText | None]
    future: asyncio.Future[tuple[list[ModelOutput], float]]
    loop: asyncio.AbstractEventLoop
    deadline: float = math.inf
    seq: int = 0
    started: float | None = None  # monotonic: when it joined a session (its backend call began)
    ids: list[int] = field(default_factory=list)
    outputs: dict[int, ModelOutput] = field(default_factory=dict)
    # What it may switch to while it waits for a drain (`Rebind`), or None; set by the caller.
    rebind: Rebind | None = None
    queued_ms: float = 0.0  # its first_ms() when handed in (what _begun takes off the backlog)
    handed_pair: tuple[int, int] | None = None  # its pair as counted when handed in, until begun

    def first_ms(self) -> float:
        """Its members' table first tokens: the device's time to prefill them."""
        return prefill_ms(self.requests)

    def queued(self, now: float) -> Queued:
        """What the schedule needs to know of it at monotonic `now`."""
        span = max(((r.decode_ms_per_token or 0.0) * r.max_new_tokens for r in self.requests), default=0.0)
        return Queued(self.knobs.pair, self.first_ms(), span, (self.deadline - now) * 1000)

    def resolve(self, result: list[ModelOutput] | BaseException) -> None:
        def deliver() -> None:
            if self.future.done():
                return
            if isinstance(result, BaseException):
                self.future.set_exception(result)
            else:
                self.future.set_result((result, self.started if self.started is not None else time.monotonic()))

        try:
            self.loop.call_soon_threadsafe(deliver)
        except RuntimeError:  # its event loop is closed: nobody waits for this any more
            pass


@dataclass(frozen=True)
class Running:
    """A decode batch as the event loop sees it: its pair, ms until it drains (stepped in turn with
    the others), decode steps it has left."""

    pair: tuple[int, int]
    drain_ms: float
    steps: int


@dataclass(frozen=True)
class DeviceView:
    """What the event loop knows of the device: the running batches and the waiting work, as of
    one read."""

    running: tuple[Running, ...]
    queue: list[Queued]
    max_sessions: int
    # Pairs of work handed in that the device thread has not taken yet (not in `queue` until it
    # publishes): two requests bound at once must see each other's pair.
    handed: frozenset[tuple[int, int]] = frozenset()

    @property
    def busy_pairs(self) -> frozenset[tuple[int, int]]:
        """The (top_k, num_active_blocks) pairs of the decode batches running and of the work
        waiting for one (it will open its batch when a running one drains), handed in or queued.
        Without the handed-in work, two long streams bound in one moment on an idle device took
        two pairs (the second a little more accurate), and their batches then held both decode
        slots for ~30 s, a step of each between any newcomer and its prefill."""
        return frozenset(r.pair for r in self.running) | frozenset(q.pair for q in self.queue) | self.handed

    @property
    def lanes(self) -> list[float]:
        """Ms until each decode slot can open a batch: a running batch's drain, 0 for a free slot."""
        return lanes([r.drain_ms for r in self.running], self.max_sessions)

    def wait_ms(self, knobs: Knobs, first_ms: float = 0.0, tokens: int = 0) -> float:
        """Device.wait_ms, on this read."""
        mine = max((r.steps for r in self.running if r.pair == knobs.pair), default=None)
        return wait_ms(self.queue, self.lanes, knobs.pair, running=mine is not None,
                       joins=mine is not None and tokens <= mine, first_ms=first_ms,
                       opens=len(self.running) < self.max_sessions)


class Device:
    def __init__(self, backend: Backend, name: str = "device") -> None:
        self.backend = backend
        self._inbox: queue.SimpleQueue[Work | None] = queue.SimpleQueue()
        self._waiting: list[Work] = []  # could not join yet, in the order handed in
        self._sessions: list[tuple[Session, list[Work]]] = []
        self._lock = threading.Lock()  # guards what view() reads from the event loop
        # Published after every step for the event loop: the running batches, the waiting work as
        # the schedule sees it, and when (monotonic).
        self._running: tuple[Running, ...] = ()
        self._queue: list[Queued] = []
        self._published = time.monotonic()
        self._queued_ms = 0.0  # table first tokens of the work handed in and not begun
        self._handed: dict[tuple[int, int], int] = {}  # pair -> groups handed in and not begun
        self._begun_pairs: list[tuple[int, int]] = []  # begun since the last publish (still in _handed)
        # The join in progress (its prefill runs inside session.join): when it began (monotonic s)
        # and its table first tokens, so that the backlog counts only what is left of it.
        self._joining: tuple[float, float] | None = None
        self._seq = itertools.count()
        self.steps = 0
        self._turn = 0  # which running batch steps next (they take turns, one step each)
        self.joins = 0
        self._stop = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # -- the event loop's side ----------------------------------------------------------------

    def submit(self, knobs: Knobs, requests: Sequence[ModelRequest], sinks: Sequence[OnText | None],
               deadline: float = math.inf) -> asyncio.Future[tuple[list[ModelOutput], float]]:
        """The group's outputs and when the device began it (monotonic s: its join). Groups that
        wait are taken earliest `deadline` first (monotonic s; its tightest member's)."""
        work = self.work(knobs, requests, sinks, deadline)
        self.hand_in(work)
        return work.future

    def work(self, knobs: Knobs, requests: Sequence[ModelRequest], sinks: Sequence[OnText | None],
             deadline: float = math.inf) -> Work:
        """A group of equal knobs, not handed in yet (`hand_in`): the caller may set its `rebind`."""
        loop = asyncio.get_running_loop()
        return Work(knobs, list(requests), list(sinks), loop.create_future(), loop, deadline, next(self._seq))

    def hand_in(self, work: Work) -> None:
        work.queued_ms = work.first_ms()
        work.handed_pair = work.knobs.pair
        with self._lock:
            self._queued_ms += work.queued_ms
            self._handed[work.handed_pair] = self._handed.get(work.handed_pair, 0) + 1
        self._inbox.put(work)

    def backlog_ms(self, scale: float = 1.0) -> float:
        """What a request handed in now waits for before its prefill begins, if it can join: the
        prefills handed in and not begun, one after another, each its table first token x `scale`
        (the replica's measured / table ratio), less what the prefill in progress has already run.
        (Waiting for decode batches depends on the knob pair: `wait_ms`, which late binding adds
        per option.)
        A prefill in progress used to count whole until it ended: on the CPU streams bench a
        request bound 30 ms into a stream's 45 ms prefill was told it waited 45, and a third of
        the requests late binding flagged infeasible would have fit (docs/BENCHMARKS.md). What it
        has run is real time, so it comes off the scaled figure: on a replica running at twice
        its table a prefill is still half to go when its table time has passed."""
        with self._lock:
            queued, joining = self._queued_ms, self._joining
        if joining is None:
            return queued * scale
        began, ms = joining
        left = max(0.0, ms * scale - (time.monotonic() - began) * 1000)
        return max(0.0, queued - ms) * scale + left

    def wait_ms(self, knobs: Knobs, first_ms: float = 0.0, tokens: int = 0) -> float:
        """How long work with these knobs (its prefill `first_ms`, `tokens` to decode), handed in now,
        would wait for decode batches before it can begin (the prefills ahead are `backlog_ms`):
        0 when it joins the running batch of its pair (it ends within that batch and leaves room for
        the work that waits) or opens one at once, else until a slot frees for its batch after every
        waiting pair's batch that opens before its own (serving.replica.device_schedule.wait_ms)."""
        return self.view().wait_ms(knobs, first_ms, tokens)

    def view(self) -> DeviceView:
        """The device as last published, aged to now: one read for all the options late binding
        weighs for a batch."""
        with self._lock:
            running, queue, published = self._running, list(self._queue), self._published
            handed = frozenset(self._handed)
        elapsed = (time.monotonic() - published) * 1000
        return DeviceView(tuple(Running(r.pair, max(0.0, r.drain_ms - elapsed), r.steps) for r in running),
                          [q.later(elapsed) for q in queue], self.backend.max_sessions, handed)

    def stop(self) -> None:
        self._stop = True
        self._inbox.put(None)

    # -- the device thread --------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop:
            self._take(block=not self._sessions and not self._waiting)
            try:
                self._admit()
                self._step()
            except BaseException as e:  # noqa: BLE001 - a failing backend fails its work, never the thread
                log.exception("device: backend failed")
                for session, works in self._sessions:
                    for w in works:
                        w.resolve(e)
                    session.close()
                self._sessions.clear()
            self._publish()

    def _take(self, block: bool) -> None:
        """Move what arrived to the waiting list; wait for something only when idle."""
        try:
            item = self._inbox.get(timeout=0.5) if block else self._inbox.get_nowait()
            while True:
                if item is not None:
                    self._waiting.append(item)
                item = self._inbox.get_nowait()
        except queue.Empty:
            pass

    def _admit(self) -> None:
        """Each waiting group, in the schedule's order (handed-in order, lost work last), joins a
        running session of its pair or opens one if the backend allows another. Once a group has
        to wait (its pair cannot run until a session drains), a later group may still join a
        running session, but only if it ends within the steps that session has left anyway and its
        prefill, which runs at once, leaves every waiting group that can still be met still met:
        joins must not keep the running batch alive past the promise made to the waiting pair."""
        if self.backend.preparing():
            # A graph capture waits for the engine: let the running batches drain (no joins, no
            # new batches) so that it gets its turn; the work waits, then joins as usual.
            if not self._sessions:
                time.sleep(0.001)  # the capture is taking the engine: do not spin meanwhile
            return
        still: list[Work] = []  # could not be placed, in the order taken
        now = time.monotonic()
        snapshot = [w.queued(now) for w in self._waiting]
        for i in in_order(snapshot):
            w = self._waiting[i]
            if w.future.done():  # cancelled while waiting (its caller left)
                self._begun(w)
                continue
            if all(s is not None and not s("") for s in w.sinks):  # every member a stream whose reader left
                self._begun(w)
                w.resolve([ModelOutput(text="", output_tokens=0, finish_reason="cancelled") for _ in w.requests])
                continue
            placed = False
            for session, works in self._sessions:
                if not self._may_join(session, w.requests, still):
                    continue
                if (placed := self._join(session, works, w)):
                    break
            if not placed and not still and len(self._sessions) < self.backend.max_sessions:
                session, works = self.backend.open_session(w.knobs), []
                placed = self._join(session, works, w)
                if works:
                    self._sessions.append((session, works))
                else:  # refused, failed, or already done: nothing runs on it
                    session.close()
            if not placed and w.rebind is not None and self._sessions:
                placed = self._rebound(w, still)
            if not placed:
                still.append(w)
        self._waiting = still

    def _may_join(self, session: Session, requests: Sequence[ModelRequest], still: list[Work]) -> bool:
        """Whether `requests` may join `session` while `still` waits: they end within the steps it
        has left, and their prefill leaves room for every waiting group that can still be met."""
        if not still:
            return True
        if max((r.max_new_tokens for r in requests), default=0) > session.remaining_steps:
            return False  # it would outlive the batch that waiting work must see end
        now = time.monotonic()
        return leaves_room([w.queued(now) for w in still], self._lanes(), prefill_ms(requests))

    def _rebound(self, w: Work, still: list[Work]) -> bool:
        """Whether `w`, which would wait for a drain, joined a running batch with other knobs."""
        assert w.rebind is not None
        pairs = frozenset(s.knobs.pair for s, _ in self._sessions)
        now = time.monotonic()
        ahead = [x.queued(now) for x in still]
        # When its own batch would open: once a slot frees, after the waiting pairs' batches before it.
        own = starts([*ahead, w.queued(now)], self._lanes())[-1]
        alternative = w.rebind(pairs, own)
        if alternative is None:
            return False
        knobs, requests, tell = alternative
        open_to = [(s, works) for s, works in self._sessions
                   if s.knobs.pair == knobs.pair and self._may_join(s, requests, still)]
        if not open_to:
            return False
        was = (w.knobs, w.requests)
        w.knobs, w.requests = knobs, requests
        tell(True)
        for session, works in open_to:
            if self._join(session, works, w):
                return True
        w.knobs, w.requests = was
        tell(False)
        return False

    def _join(self, session: Session, works: list[Work], w: Work) -> bool:
        """Whether `w` was placed: it joined `session` (and is in `works` until its members are
        done), or it failed on its own (resolved with the error). False: it cannot join."""
        w.started = time.monotonic()
        with self._lock:
            self._joining = (w.started, w.queued_ms)
        try:
            ids = session.join(w.knobs, w.requests, w.sinks)
        except BaseException as e:  # noqa: BLE001 - this group's failure (e.g. a bad input) is its own
            self._begun(w)
            w.resolve(e)
            return True
        if ids is None:
            with self._lock:
                self._joining = None
            return False
        self._begun(w)
        w.ids = ids
        self.joins += 1
        works.append(w)
        self._collect(session, works, session.finished())  # members done at their first token
        return True

    def _begun(self, w: Work) -> None:
        with self._lock:
            self._queued_ms = max(0.0, self._queued_ms - w.queued_ms)
            self._joining = None
            if w.handed_pair is not None:  # counted until the next publish shows its batch running
                self._begun_pairs.append(w.handed_pair)
                w.handed_pair = None

    def _step(self) -> None:
        """One decode step of one running batch, the batches taking turns. Work that arrived during
        the step is admitted before the next batch's step, not after a whole round: with a second
        batch running (a long stream of another knob pair, say) a newcomer's prefill would otherwise
        wait for a step of every batch. On the profile's table (steps of 29-44 ms) that round was
        ~73 ms, more than the slack of most budgets."""
        if not self._sessions:
            return
        i = self._turn % len(self._sessions)
        session, works = self._sessions[i]
        if session.active:
            session.step()
            self.steps += 1
        self._collect(session, works, session.finished())
        if session.active:
            self._turn = i + 1
        else:  # the next batch takes its place in the turn
            self._sessions.remove((session, works))
            session.close()
            self._turn = i

    def _collect(self, session: Session, works: list[Work], done: dict[int, ModelOutput]) -> None:
        for w in list(works):
            for i in w.ids:
                if i in done:
                    w.outputs[i] = done[i]
            if w.ids and all(i in w.outputs for i in w.ids):
                w.resolve([w.outputs[i] for i in w.ids])
                works.remove(w)

    def _drains(self) -> list[float]:
        """Ms until each running session drains, stepped in turn with the others."""
        return interleaved([(s.remaining_ms(), s.remaining_steps) for s, _ in self._sessions])

    def _lanes(self) -> list[float]:
        """Ms until each of the backend's slots can open a session (0: free now)."""
        return lanes(self._drains(), self.backend.max_sessions)

    def _publish(self) -> None:
        running = tuple(Running(s.knobs.pair, ms, s.remaining_steps)
                        for (s, _), ms in zip(self._sessions, self._drains(), strict=True))
        now = time.monotonic()
        queue = [w.queued(now) for w in self._waiting]
        with self._lock:
            self._running, self._queue, self._published = running, queue, now
            for pair in self._begun_pairs:
                left = self._handed.get(pair, 0) - 1
                if left > 0:
                    self._handed[pair] = left
                else:
                    self._handed.pop(pair, None)
            self._begun_pairs.clear()
