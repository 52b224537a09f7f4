"""One small exception hierarchy: every error names the value and what is accepted."""

from __future__ import annotations

from typing import Any


def _rebuild(cls: type[ControllerError], args: tuple[Any, ...], state: dict[str, Any]) -> ControllerError:
    err = cls.__new__(cls)
    Exception.__init__(err, *args)
    err.__dict__.update(state)
    return err


class ControllerError(ValueError):
    """Base of every error the controller library raises on bad input."""

    def __reduce__(self) -> tuple[Any, ...]:
        # Subclasses take their own constructor arguments, which default pickling cannot replay; Ray
        # pickles a replica's exception to its caller, and without this it arrives as an
        # UnserializableException instead of the error that names the value.
        return (_rebuild, (type(self), self.args, dict(self.__dict__)))


class KnobError(ControllerError):
    def __init__(self, knob: str, value: Any, accepted: str) -> None:
        self.knob, self.value, self.accepted = knob, value, accepted
        super().__init__(f"{knob}={value!r} is not valid; expected {accepted}")


class BudgetError(ControllerError):
    def __init__(self, value: Any, reason: str) -> None:
        self.value, self.reason = value, reason
        super().__init__(
            f"latency budget {value!r} {reason}; send a finite number of milliseconds > 0, e.g. 180"
        )


class ToleranceError(ControllerError):
    def __init__(self, value: Any) -> None:
        self.value = value
        super().__init__(f"tolerance {value!r} is not valid; expected a number in [0, 1], e.g. 0.05")


class DataLoadError(ControllerError):
    """Profiling results could not be read (strict mode, missing dir, nothing usable)."""

    def __init__(self, path: str, problem: str) -> None:
        self.path, self.problem = path, problem
        super().__init__(f"{path}: {problem}")


class UnknownDatasetError(ControllerError):
    def __init__(self, name: str, available: list[str]) -> None:
        self.name, self.available = name, available
        listed = ", ".join(available) if available else "none"
        super().__init__(f"dataset {name!r} not found; datasets found: {listed}")


class BuildError(ControllerError):
    """The table could not be built from the given samples and parameters."""


class TableLoadError(ControllerError):
    """A table file is missing, not JSON, fails its schema or checksum, or is empty."""

    def __init__(self, path: str, problem: str) -> None:
        self.path, self.problem = path, problem
        super().__init__(f"cannot load table {path}: {problem}")


class TableLimitError(TableLoadError):
    """A table is larger than the documented limits (controller/table_file.py, docs/serving.md):
    refused before it is parsed, so that one huge file cannot cost the controller and every
    router hundreds of MB and seconds of swap (issue 19, item 8)."""

    def __init__(self, path: str, what: str, value: int, limit: int) -> None:
        self.what, self.value, self.limit = what, value, limit
        super().__init__(
            path,
            f"holds {value} {what}, more than the limit of {limit}; split it into smaller tables "
            "(fewer datasets or knob values per build); limits: docs/serving.md, 'Table limits'",
        )


class StoreError(ControllerError):
    """A table store operation failed (unknown version, unreadable store, refused publish)."""


class StoreReadError(StoreError):
    """A store read did not finish in time or could not run (hung NFS mount, slow object store).
    Transient: the same read may work at the next poll, so a version is not rejected for it."""


class StoreLockError(StoreError):
    """Another publisher held the store's publish lock for longer than the wait allowed."""


class VersionExistsError(StoreError):
    """A create-only write found the object already there: another publisher took the same version
    id at the same moment (object stores publish without a lock). The publish takes another id."""


class PointerError(StoreError):
    """The store's LATEST pointer holds something other than a version id (a path, binary)."""


class NotAFileError(StoreError):
    """The path exists but is not a regular file (directory, FIFO, device, socket) or is too large."""


class EvaluationError(ControllerError):
    """An evaluation cannot be run as asked (bad fraction, empty split, budgets, strategies)."""


class TokenCountError(ControllerError):
    def __init__(self, value: object, maximum: int) -> None:
        self.value, self.maximum = value, maximum
        super().__init__(f"max_new_tokens={value!r} is not valid; expected an integer in [0, {maximum}]")


class LiveDataError(ControllerError):
    """An observation or a snapshot is not valid (names the field and what is accepted)."""


class SketchError(ControllerError):
    """A serialized sketch is malformed, too large, or made with another accuracy."""


class MissingExtraError(ImportError):
    """An optional dependency is missing; the message names the extra that installs it. An ImportError,
    not a ControllerError: callers that guard an optional import catch ImportError."""


class RollbackRefusedError(StoreError):
    """LATEST names an older version than the store's newest valid one, and no signed rollback
    record allows that move (a replayed `echo OLD_ID > LATEST`)."""

    def __init__(self, target: str, newest: str, why: str) -> None:
        self.target, self.newest, self.why = target, newest, why
        super().__init__(
            f"LATEST names {target!r}, older than the newest signed version {newest!r}, and {why}; versions "
            f"only move forward: roll back with `lookupctl rollback --to {target} --sign-key-file KEY`"
        )
