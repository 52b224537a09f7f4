"""Estimators shared by the router and the model replica. Pure: values in, a number out."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from statistics import NormalDist, median

# Which quantile of measured / table first-token latency stands for "slower than the table".
TAIL_QUANTILE = 0.9


def upper_quantile(values: Iterable[float], q: float) -> float | None:
    """The q-quantile of `values` by rank, rounding up (a tail figure errs high); None if empty."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else None


# 1.4826 x MAD estimates a normal distribution's standard deviation.
MAD_SCALE = 1.4826


def robust_quantile(values: Iterable[float], q: float) -> float | None:
    """The q-quantile of a tight distribution (serving overhead: a fixed cost per request plus
    noise) estimated as median + z(q) x 1.4826 x MAD, which one slow sample cannot move: median and
    MAD each need half the samples to shift. A rank quantile (p99 of a window of a few dozen) is the
    slowest sample, and one stall of the host would then hold every budget for the whole window.
    The price: a genuinely heavy tail is under-read, so the router measures the overhead it sees
    at every answer and this estimate follows the bulk within a few requests. None if empty."""
    data = [v for v in values if math.isfinite(v)]
    if not data:
        return None
    mid = median(data)
    mad = median(abs(v - mid) for v in data)
    return mid + NormalDist().inv_cdf(q) * MAD_SCALE * mad if 0.5 < q < 1 else mid if q <= 0.5 else max(data)


class TimedWindow:
    """The last `maxlen` samples of the last `window_s` seconds (time is an argument)."""

    def __init__(self, window_s: float, maxlen: int = 256) -> None:
        self.window_s = window_s
        self._items: deque[tuple[float, float]] = deque(maxlen=maxlen)
        # Bumped whenever the window's content changes (a sample added or expired), so that a
        # reader can keep a figure computed from it until then.
        self.version = 0

    def add(self, now: float, value: float) -> None:
        if math.isfinite(value):
            self._items.append((now, value))
            self.version += 1

    def expire(self, now: float) -> None:
        while self._items and now - self._items[0][0] > self.window_s:
            self._items.popleft()
            self.version += 1

    def values(self, now: float | None = None) -> list[float]:
        if now is not None:
            self.expire(now)
        return [v for _, v in self._items]

    def __len__(self) -> int:
        return len(self._items)

    @property
    def newest(self) -> float | None:
        """When the newest sample in the window was added (None: the window is empty)."""
        return self._items[-1][0] if self._items else None
