"""Request inputs (headers, query, body) parsed into values or a 400 that says what is accepted."""

from __future__ import annotations

import math
import re
from typing import Any

from controller.errors import BudgetError
from controller.validate import validate_budget
from serving.config import BudgetSettings
from serving.errors import ServingError

PREFIX_CHARS = 64  # errors quote at most this much of a value: a 10 MB prompt gets a short answer
# Plain ASCII decimal numbers only: float() would also take "1_000", Unicode digits and "infinity".
_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?", re.ASCII)


def prefix(value: Any) -> Any:
    """JSON-safe, short form of a client value for an error body."""
    if value is None or isinstance(value, bool) or (isinstance(value, int) and abs(value) < 10**18):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    text = value if isinstance(value, str) else repr(value)
    # backslashreplace: a lone surrogate or odd byte must not break the JSON encoder
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text if len(text) <= PREFIX_CHARS else f"{text[:PREFIX_CHARS]}... ({len(text)} chars)"


class BadInput(ServingError):
    """Becomes a 400 (413 for sizes) JSON error naming the field, a short prefix of the value and
    what is accepted. `field` is always one of ours (a configured header, a query or body field
    name, or "body"), never a client-chosen key: it is also a stats key and a metric tag."""

    def __init__(self, field: str, value: Any, problem: str, accepted: str, status: int = 400) -> None:
        self.field, self.value, self.problem, self.accepted = field, prefix(value), problem, accepted
        self.status = status
        super().__init__(f"{field}={self.value!r} {problem}; {accepted}")

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
