"""Errors of the serving package, in one hierarchy under ServingError.

Errors raised for a request (BadInput, ModelCallError, defined here) carry an HTTP status and a JSON
body; errors of the configuration are also ValueErrors, and a controller replica without a table is
also a RuntimeError, so callers that caught those keep working. Errors of the layers below keep their own
modules (controller/errors.py, moe/errors.py)."""

from __future__ import annotations

import math
from typing import Any


class ServingError(Exception):
    """Base of every error the serving package defines."""


class ServingConfigError(ServingError, ValueError):
    """A serving YAML, an app argument or a backend name is not usable; the message names the field."""


class NoTableError(ServingError, RuntimeError):
    """A LookupController replica has no valid table to answer with (none loaded yet, or none ever:
    its health check fails). A RuntimeError too, so that callers that caught RuntimeError keep working."""


PREFIX_CHARS = 64  # errors quote at most this much of a value: a 10 MB prompt gets a short answer


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


class ModelCallError(ServingError):
    """`kind` is one of a fixed set, so that it can be a metric tag and a client can branch on it."""

    KINDS = ("model_unavailable", "model_timeout", "unsupported_config", "model_error", "input_too_long")

    def __init__(self, status: int, kind: str, message: str) -> None:
        assert kind in self.KINDS
        self.status, self.kind, self.message = status, kind, message
        super().__init__(f"{kind}: {message}")

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.kind, "message": self.message}
