"""Request inputs (headers, query, body) parsed into values or a 400 that says what is accepted."""

from __future__ import annotations

import re

from controller.errors import BudgetError
from controller.validate import validate_budget
from serving.config import BudgetSettings
from serving.errors import BadInput

# Plain ASCII decimal numbers only: float() would also take "1_000", Unicode digits and "infinity".
_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?", re.ASCII)


def single(values: list[str], field: str) -> str | None:
    """The one value of a header or query parameter; a repeated one is refused rather than
    silently taking the first or the last."""
    if len(values) > 1:
        raise BadInput(field, values[:3], f"is given {len(values)} times", "send it once")
    return values[0] if values else None


def _number(raw: str, field: str, accepted: str) -> float:
    text = raw.strip()
    if text.lower().lstrip("+-") in ("nan", "inf", "infinity"):
        raise BadInput(field, raw, "is NaN" if "nan" in text.lower() else "is infinite", accepted)
    if not _NUMBER.fullmatch(text):
        raise BadInput(field, raw, "is not a number", accepted)
    return float(text)


def parse_budget(raw: str | None, field: str, settings: BudgetSettings) -> float:
    """Milliseconds from a header or query value. None means absent: the default, or a 400."""
    accepted = f"send a finite number of milliseconds > 0 and <= {settings.max_budget_ms:g}, e.g. {field}: 180"
    if raw is None or raw.strip() == "":
        if settings.require_budget or settings.default_budget_ms is None:
            raise BadInput(field, raw, "is missing and this server requires a budget", accepted)
        return settings.default_budget_ms
    value = _number(raw, field, accepted)
    try:  # the library's own rule (finite, > 0), so that the edge and the library agree
        value = validate_budget(value)
    except BudgetError as e:
        raise BadInput(field, raw, e.reason, accepted) from None
    if value > settings.max_budget_ms:
        raise BadInput(field, raw, f"is above the maximum of {settings.max_budget_ms:g} ms", accepted)
    return value


def parse_tolerance(raw: str | None, field: str) -> float | None:
    if raw is None or raw.strip() == "":
        return None
    accepted = f"send a number in [0, 1] (relative slack on the budget), e.g. {field}: 0.05"
    value = _number(raw, field, accepted)
    if not 0.0 <= value <= 1.0:
        raise BadInput(field, raw, "is outside [0, 1]", accepted)
    return value


def parse_dataset(raw: str | None, field: str) -> str | None:
    if raw is None or raw.strip() == "":
        return None
    text = raw.strip()
    if len(text) > 200 or not text.isprintable():
        raise BadInput(field, raw, "is not a dataset name", "send a short name such as vqav2")
    return text
