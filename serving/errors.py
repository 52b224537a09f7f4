"""Errors of the serving package, in one hierarchy under ServingError.

Errors raised for a request (BadInput, ModelCallError) carry an HTTP status and a JSON body; errors
of the configuration are also ValueErrors, and a controller replica without a table is also a
RuntimeError, so callers that caught those keep working. Errors of the layers below keep their own
modules (controller/errors.py, moe/errors.py)."""

from __future__ import annotations


class ServingError(Exception):
    """Base of every error the serving package defines."""


class ServingConfigError(ServingError, ValueError):
    """A serving YAML, an app argument or a backend name is not usable; the message names the field."""


class NoTableError(ServingError, RuntimeError):
    """A LookupController replica has no valid table to answer with (none loaded yet, or none ever:
    its health check fails). A RuntimeError too, so that callers that caught RuntimeError keep working."""
