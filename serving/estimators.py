"""Estimators shared by the router and the model replica. Pure: values in, a number out."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from statistics import median

# Which quantile of measured / table first-token latency stands for "slower than the table".
TAIL_QUANTILE = 0.9


def upper_quantile(values: Iterable[float], q: float) -> float | None:
    """The q-quantile of `values` by rank, rounding up (a tail figure errs high); None if empty."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else None


# 1.4826 x MAD estimates a normal distribution's standard deviation.
MAD_SCALE = 1.4826


def robust_upper(values: Iterable[float], spread: float = 3.0) -> float | None:
    """median + `spread` x scaled MAD: a high figure for a tight distribution (serving overhead is
    a fixed cost per request plus noise) that one slow sample cannot move. A p90 over a window of
    a few dozen samples is the slowest sample or near it, and one stall of the host then holds
    every budget for the whole window; median and MAD each need half the window to move.
    None if empty."""
    data = [v for v in values if math.isfinite(v)]
    if not data:
        return None
    mid = median(data)
    mad = median(abs(v - mid) for v in data)
    return mid + spread * MAD_SCALE * mad


class TimedWindow:
    """The last `maxlen` samples of the last `window_s` seconds (time is an argument)."""

    def __init__(self, window_s: float, maxlen: int = 256) -> None:
        self.window_s = window_s
        self._items: deque[tuple[float, float]] = deque(maxlen=maxlen)

    def add(self, now: float, value: float) -> None:
        if math.isfinite(value):
            self._items.append((now, value))

    def values(self, now: float | None = None) -> list[float]:
        while now is not None and self._items and now - self._items[0][0] > self.window_s:
            self._items.popleft()
        return [v for _, v in self._items]

    def __len__(self) -> int:
        return len(self._items)
