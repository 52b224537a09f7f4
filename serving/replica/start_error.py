"""How much later the device began work than late binding predicted, measured on this replica.

Late binding predicts when a request's prefill will begin on the device (the prefills handed in
ahead of it, and the decode batches it must wait for: serving.replica.device_schedule) and judges
each option against its deadline with that. What the schedule does not model still delays the
start: members bound in the same Serve batch ahead of it, a host busier than the table's, a pair's
batch that lasts longer than its table decode. So each start is compared with its prediction, and
the tail of the errors over the last seconds is added to the next predictions, apart for the two
kinds of prediction (joining a batch at once, or waiting for batches to drain), whose errors differ
by an order of magnitude. The error is taken against the schedule's own prediction, never a
corrected one, so the correction cannot feed on itself.

A window with too few errors (the first requests after a pause) falls back on the last figure a
full window gave, halved for every `window_s` since its newest error: a burst after a pause starts
with what the last burst measured (on the CPU, two misses of a step came in its first second,
before any error of that step was measured), and a long pause leaves little of it. Pure: time is
an argument.
"""

from __future__ import annotations

from serving.estimators import TimedWindow, upper_quantile


class StartError:
    def __init__(self, window_s: float = 10.0, quantile: float = 0.9, min_samples: int = 5) -> None:
        self.quantile, self.min_samples = quantile, min_samples
        self._windows = {False: TimedWindow(window_s), True: TimedWindow(window_s)}
        # Late binding asks for every option of every request: keep each figure until its window
        # changes (a sample added or expired), instead of sorting the window each time.
        self._cached: dict[bool, tuple[int, float]] = {}
        # The last figure a full window gave, and when its newest error came (the fallback).
        self._last: dict[bool, tuple[float, float]] = {}
        self.window_s = window_s

    def add(self, now: float, waits: bool, error_ms: float) -> None:
        """A start `error_ms` later (negative: sooner) than predicted; `waits`: the prediction
        included waiting for decode batches."""
        self._windows[waits].add(now, error_ms)

    def ms(self, now: float, waits: bool) -> float:
        """What to add to a prediction of this kind: the tail of recent errors, never negative;
        with fewer than `min_samples` of them, the last full window's figure, halved per window_s
        since (0 before any)."""
        window = self._windows[waits]
        window.expire(now)
        cached = self._cached.get(waits)
        if cached is not None and cached[0] == window.version:
            return cached[1]
        values = window.values()
        if len(values) < self.min_samples:
            last = self._last.get(waits)
            return 0.0 if last is None else last[1] * 0.5 ** (max(0.0, now - last[0]) / self.window_s)
        ms = max(0.0, upper_quantile(values, self.quantile) or 0.0)
        self._cached[waits] = (window.version, ms)
        self._last[waits] = (window.newest if window.newest is not None else now, ms)
        return ms

    def to_dict(self, now: float) -> dict[str, float]:
        return {"join_ms": self.ms(now, False), "wait_ms": self.ms(now, True)}
