"""Build parameters of a lookup table, validated once and stored inside the table file."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

AggregationMethod = Literal["mean", "median", "max_accuracy"]
LatencyMetric = Literal["prefill", "total"]


class BuildParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    aggregation_method: AggregationMethod = "mean"
    # Default relative slack on budgets; a request may override it within [0, 1].
    tolerance: float = Field(0.05, ge=0.0, le=1.0)
    # "prefill": T_vision_total + T_LLM_prefill (decode length depends on the answer, not the knobs).
    latency_metric: LatencyMetric = "prefill"
    # When set, this latency quantile is compared with budgets instead of the aggregated latency,
    # so that a budget is met by most requests rather than by the average one.
    latency_quantile: float | None = Field(None, gt=0.0, lt=1.0)
    # Configs with fewer samples are left out of the table (and reported).
    min_samples: int = Field(1, ge=1)


def make_build_params(**values: object) -> BuildParams:
    """BuildParams from loose values; a bad one raises BuildError naming the field and the value."""
    from pydantic import ValidationError

    from controller.errors import BuildError

    try:
        return BuildParams(**values)  # type: ignore[arg-type,unused-ignore]
    except ValidationError as e:
        err = e.errors()[0]
        field = ".".join(str(x) for x in err["loc"])
        raise BuildError(f"{field}={err.get('input')!r} is not valid: {err['msg']}") from None
