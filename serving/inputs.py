"""Request inputs (headers, query, body) parsed into values or a 400 that says what is accepted."""

from __future__ import annotations

import base64
import binascii
import math
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from serving.config import BudgetSettings


class BadInput(Exception):
    """Becomes a 400 JSON error naming the field, the value and what is accepted."""

    def __init__(self, field: str, value: Any, problem: str, accepted: str) -> None:
        self.field, self.value, self.problem, self.accepted = field, value, problem, accepted
        super().__init__(f"{field}={value!r} {problem}; {accepted}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "error": {
                "field": self.field,
                "value": self.value,
                "problem": self.problem,
                "accepted": self.accepted,
                "message": str(self),
            }
        }


class GenerateBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1, max_length=100_000)
    image: str | None = Field(default=None, description="base64-encoded image bytes")
    max_new_tokens: int = Field(default=16, ge=1)


def parse_budget(raw: str | None, field: str, settings: BudgetSettings) -> float:
    """Milliseconds from a header or query value. None means absent: the default, or a 400."""
    accepted = f"send a finite number of milliseconds > 0 and <= {settings.max_budget_ms:g}, e.g. {field}: 180"
    if raw is None or raw.strip() == "":
        if settings.require_budget or settings.default_budget_ms is None:
            raise BadInput(field, raw, "is missing and this server requires a budget", accepted)
        return settings.default_budget_ms
    text = raw.strip()
    try:
        value = float(text)
    except ValueError:
        raise BadInput(field, raw, "is not a number", accepted) from None
    if math.isnan(value):
        raise BadInput(field, raw, "is NaN", accepted)
    if math.isinf(value):
        raise BadInput(field, raw, "is infinite", accepted)
    if value <= 0:
        raise BadInput(field, raw, "is not positive", accepted)
    if value > settings.max_budget_ms:
        raise BadInput(field, raw, f"is above the maximum of {settings.max_budget_ms:g} ms", accepted)
    return value


def parse_tolerance(raw: str | None, field: str) -> float | None:
    if raw is None or raw.strip() == "":
        return None
    accepted = f"send a number in [0, 1] (relative slack on the budget), e.g. {field}: 0.05"
    try:
        value = float(raw.strip())
    except ValueError:
        raise BadInput(field, raw, "is not a number", accepted) from None
    if not 0.0 <= value <= 1.0:  # also refuses NaN
        raise BadInput(field, raw, "is outside [0, 1]", accepted)
    return value


def parse_dataset(raw: str | None, field: str) -> str | None:
    if raw is None or raw.strip() == "":
        return None
    text = raw.strip()
    if len(text) > 200 or not text.isprintable():
        raise BadInput(field, raw[:200], "is not a dataset name", "send a short name such as vqav2")
    return text


def check_body(body: GenerateBody, max_new_tokens_limit: int) -> None:
    if body.max_new_tokens > max_new_tokens_limit:
        raise BadInput(
            "max_new_tokens",
            body.max_new_tokens,
            "is above this server's limit",
            f"send an integer in [1, {max_new_tokens_limit}]",
        )
    if body.image is not None:
        try:
            base64.b64decode(body.image, validate=True)
        except (binascii.Error, ValueError):
            raise BadInput(
                "image", body.image[:40], "is not valid base64", "send the image bytes base64-encoded"
            ) from None
