"""How much later the device began work than late binding predicted, measured on this replica.

Late binding predicts when a request's prefill will begin on the device (the prefills handed in
ahead of it, and the decode batches it must wait for: serving.replica.device_schedule) and judges
each option against its deadline with that. What the schedule does not model still delays the
start: members bound in the same Serve batch ahead of it, a host busier than the table's, a pair's
batch that lasts longer than its table decode. So each start is compared with its prediction, and
the tail of the errors over the last seconds is added to the next predictions, apart for the two
kinds of prediction (joining a batch at once, or waiting for batches to drain), whose errors differ
by an order of magnitude. The error is taken against the schedule's own prediction, never a
corrected one, so the correction cannot feed on itself. Pure: time is an argument.
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

    def add(self, now: float, waits: bool, error_ms: float) -> None:
        """A start `error_ms` later (negative: sooner) than predicted; `waits`: the prediction
        included waiting for decode batches."""
        self._windows[waits].add(now, error_ms)

    def ms(self, now: float, waits: bool) -> float:
        """What to add to a prediction of this kind: the tail of recent errors, never negative; 0
        until there are `min_samples` of them."""
        window = self._windows[waits]
        window.expire(now)
        cached = self._cached.get(waits)
        if cached is not None and cached[0] == window.version:
            return cached[1]
        values = window.values()
        ms = 0.0 if len(values) < self.min_samples else max(0.0, upper_quantile(values, self.quantile) or 0.0)
        self._cached[waits] = (window.version, ms)
        return ms

    def to_dict(self, now: float) -> dict[str, float]:
        return {"join_ms": self.ms(now, False), "wait_ms": self.ms(now, True)}
