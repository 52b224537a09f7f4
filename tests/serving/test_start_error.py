"""The replica's measured start error (serving.replica.start_error), by hand."""

from __future__ import annotations

import math

import pytest

from serving.replica.start_error import StartError


def test_nothing_is_added_until_there_are_enough_errors_and_never_less_than_zero() -> None:
    e = StartError(window_s=10.0, quantile=0.9, min_samples=3)
    e.add(0.0, True, 40.0)
    e.add(0.1, True, 50.0)
    assert e.ms(0.2, True) == 0.0  # two samples: not yet
    e.add(0.2, True, 60.0)
    assert e.ms(0.3, True) == 60.0  # the tail by rank
    for t in range(3):
        e.add(1.0 + t, False, -5.0)  # starts that came sooner than predicted add nothing
    assert e.ms(4.0, False) == 0.0


def test_joins_and_waits_are_corrected_apart_and_old_errors_expire() -> None:
    e = StartError(window_s=10.0, quantile=0.9, min_samples=1)
    e.add(0.0, True, 120.0)
    e.add(0.0, False, 2.0)
    assert (e.ms(1.0, True), e.ms(1.0, False)) == (120.0, 2.0)
    assert e.to_dict(1.0) == {"join_ms": 2.0, "wait_ms": 120.0}
    # out of the window: the last full window's figure, halved per window since its newest error
    assert e.ms(11.0, True) == pytest.approx(120.0 * 0.5 ** 1.1)


def test_a_non_finite_error_is_not_counted() -> None:
    e = StartError(min_samples=1)
    e.add(0.0, True, math.nan)
    e.add(0.0, True, math.inf)
    assert e.ms(0.0, True) == 0.0


def test_a_burst_after_a_pause_starts_with_what_the_last_burst_measured() -> None:
    e = StartError(window_s=10.0, quantile=0.9, min_samples=3)
    for i in range(5):
        e.add(i * 0.1, True, 30.0)
    assert e.ms(0.5, True) == 30.0
    # 20 s of pause: the window is empty, the last figure is carried at a quarter
    assert e.ms(20.4, True) == pytest.approx(30.0 * 0.5 ** 2)
    # two new errors are not enough yet: still the carried figure
    e.add(20.5, True, 2.0)
    e.add(20.6, True, 2.0)
    assert e.ms(20.6, True) == pytest.approx(30.0 * 0.5 ** (20.2 / 10))
    # a full window again: its own figure, which becomes the new fallback
    e.add(20.7, True, 4.0)
    assert e.ms(20.7, True) == 4.0
    assert e.ms(60.7, True) == pytest.approx(4.0 * 0.5 ** 4)
    # joins never had a full window: nothing is carried for them
    assert e.ms(60.7, False) == 0.0
