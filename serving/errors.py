"""Errors of the serving package, in one hierarchy under ServingError.

Errors raised for a request (BadInput, ModelCallError) carry an HTTP status and a JSON body; errors
of the configuration are also ValueErrors, so callers that caught ValueError keep working. Errors of
the layers below keep their own modules (controller/errors.py, moe/errors.py)."""

from __future__ import annotations


class ServingError(Exception):
    """Base of every error the serving package defines."""


class ServingConfigError(ServingError, ValueError):
    """A serving YAML, an app argument or a backend name is not usable; the message names the field."""
