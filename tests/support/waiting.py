"""Waiting for a condition in end-to-end tests: liveness, not timing (the limit only bounds a broken run)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def until(pred: Callable[[], Any], what: str, limit_s: float = 90.0, every_s: float = 0.1) -> Any:
    """The first truthy value of `pred()`, polled every `every_s`; AssertionError naming `what` if
    none comes within `limit_s`."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(every_s)
    raise AssertionError(f"not reached within {limit_s} s: {what}")
