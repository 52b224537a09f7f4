"""Validation of request values (budgets, tolerances) with errors that say what is accepted."""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np
import numpy.typing as npt

from controller.errors import BudgetError, ToleranceError


def validate_budget(value: Any) -> float:
    if type(value) is float and 0.0 < value < math.inf:  # fast path; NaN fails the comparison
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise BudgetError(value, "is not a number")
    f = float(value)
    if math.isnan(f):
        raise BudgetError(value, "is NaN")
    if math.isinf(f):
        raise BudgetError(value, "is infinite")
    if f <= 0:
        raise BudgetError(value, "is not positive")
    return f


def validate_budgets(values: Any) -> npt.NDArray[np.float64]:
    try:
        arr = np.asarray(values, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise BudgetError(values, "is not a sequence of numbers") from None
    # Two reductions and no temporaries: min/max propagate NaN, which then fails both comparisons.
    if len(arr) and not (arr.min() > 0.0 and arr.max() < np.inf):
        i = int(np.flatnonzero(~(np.isfinite(arr) & (arr > 0)))[0])
        validate_budget(float(arr[i]))  # raises with the precise reason
    return arr


def validate_tolerance(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ToleranceError(value)
    f = float(value)
    if not 0.0 <= f <= 1.0:  # also rejects NaN
        raise ToleranceError(value)
    return f
