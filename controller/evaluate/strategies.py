"""Build strategies to compare (mean, median, pNN, ...) and the budgets to evaluate at."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from controller.errors import EvaluationError
from controller.params import BuildParams, make_build_params
from controller.table import Table


@dataclass(frozen=True)
class Strategy:
    """How the table compares latency with budgets: the aggregate ("mean", "median") or a quantile."""

    name: str
    params: BuildParams


_QUANTILE_RE = re.compile(r"^p(\d{1,2}(\.\d+)?)$")


def strategy_name(params: BuildParams) -> str:
    q = params.latency_quantile
    return f"p{q * 100:g}" if q is not None else params.aggregation_method


def parse_strategies(spec: str, base: BuildParams) -> tuple[Strategy, ...]:
    """`"mean,p90,p95"` -> strategies sharing `base` except for the latency statistic."""
    names = [s.strip().lower() for s in spec.split(",") if s.strip()]
    if not names:
        raise EvaluationError(f"compare={spec!r} names no strategy; expected e.g. mean,p90,p95")
    out: list[Strategy] = []
    for name in names:
        values = base.model_dump()
        m = _QUANTILE_RE.match(name)
        if name in ("mean", "median", "max_accuracy"):
            values.update(aggregation_method=name, latency_quantile=None)
        elif m and 0 < float(m.group(1)) < 100:
            values.update(latency_quantile=float(m.group(1)) / 100)
        else:
            raise EvaluationError(f"compare strategy {name!r} is not valid; expected mean, median, "
                                  "max_accuracy or a latency percentile pNN such as p90, p95, p99")
        if any(s.name == name for s in out):
            raise EvaluationError(f"compare strategy {name!r} is listed twice")
        out.append(Strategy(name, make_build_params(**values)))
    return tuple(out)


def budget_range(start: float, stop: float, step: float) -> tuple[float, ...]:
    """start, start + step, ... up to stop inclusive."""
    if not all(math.isfinite(v) for v in (start, stop, step)) or start <= 0 or step <= 0 or stop < start:
        raise EvaluationError(f"budget_range {start:g} {stop:g} {step:g} is not valid; expected "
                              "START STOP STEP with 0 < START <= STOP and STEP > 0, e.g. 80 400 10")
    n = int(math.floor((stop - start) / step + 1e-9)) + 1
    if n > 10_000:
        raise EvaluationError(f"budget_range gives {n} budgets; use a larger step (at most 10000)")
    return tuple(round(start + i * step, 9) for i in range(n))


def default_budgets(table: Table) -> tuple[float, ...]:
    """10 ms steps from the fastest config (rounded down) to the slowest (rounded up)."""
    lat = [c.latency_ms for c in table.configs()]
    return budget_range(max(10.0, math.floor(min(lat) / 10) * 10), math.ceil(max(lat) / 10) * 10, 10.0)
