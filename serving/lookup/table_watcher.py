"""Decides whether the store holds a table that should replace the one being served (no Ray here)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any, Literal

from controller import Table
from controller.errors import ControllerError, PointerError, RollbackRefusedError, StoreReadError
from controller.store import TableStore

log = logging.getLogger("ray.serve")
Outcome = Literal["unchanged", "accepted", "rejected", "unavailable"]


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat()


@dataclass(frozen=True)
class Rejection:
    version_id: str
    reason: str
    at: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class TableWatcher:
    """`check()` is blocking (file or object-store reads, JSON parsing, checksum): run it off the
    event loop. It never raises; the caller swaps `table` in with one reference assignment, so
    readers see the old table or the new one, never a mix."""

    def __init__(self, store: TableStore, version: str = "latest", *, clock: Callable[[], float] = time.time) -> None:
        self.store, self.version, self.clock = store, version, clock
        self.table: Table | None = None
        self.loaded_at: str | None = None
        self.loaded_from: str | None = None
        self.last_rejection: Rejection | None = None
        self.last_error: str | None = None  # store unreadable or empty; not a rejected version
        self.accepted = 0
        self.rejected = 0
        self.read_failures = 0  # store reads that timed out or failed (the store, not a version)
        # Versions are immutable once published, so a rejected id is not read again every poll.
        self._rejected_ids: set[str] = set()
        # A backward move refused for lack of a signed rollback record -> the record seen then: the
        # same move is judged again only once the record changes (`lookupctl rollback` ran).
        self._refused_moves: dict[str, str] = {}

    def retarget(self, store: TableStore, version: str) -> None:
        self.store, self.version = store, version
        self._rejected_ids.clear()
        self._refused_moves.clear()

    def check(self, validate: Callable[[Table], None] | None = None) -> tuple[Outcome, Table | None]:
        """Returns ("accepted", new_table) when a new valid version should be swapped in.
        `validate` adds checks of the caller's (e.g. every config runs on the served model); a
        ControllerError from it rejects the version like a corrupt file."""
        try:
            target = self.store.resolve_id(self.version)
        except StoreReadError as e:
            return self._unavailable(str(e), counted=True)
        except PointerError as e:
            return self._bad_pointer(str(e), validate)
        except ControllerError as e:  # empty store, or a pinned id that is not a version id
            return self._unavailable(str(e), counted=False)
        except OSError as e:
            return self._unavailable(f"reading LATEST: {e}", counted=True)
        if self.table is not None and self.loaded_from == self.store.source(target):
            return "unchanged", None
        if target in self._rejected_ids:
            return "unchanged", None
        if target in self._refused_moves and self._refused_moves[target] == self._record():
            return "unchanged", None
        try:
            self._check_forward(target)
            table = self._load(target, validate)
        except RollbackRefusedError as e:
            # Versions move forward: an older signed id in LATEST (a replay) is refused and counted,
            # the table in use stays (or, at start, the newest valid version is served).
            self._refused_moves[target] = self._record()
            self._reject(target, str(e), remember=False)
            if self.table is None:
                return self._start_with_newest_valid(validate)
            return "rejected", None
        except StoreReadError as e:
            return self._unavailable(str(e), counted=True)
        except ControllerError as e:
            self._reject(target, str(e))
            if self.table is None and self.version == "latest":
                return self._start_with_newest_valid(validate)
            return "rejected", None
        except OSError as e:
            return self._unavailable(f"reading version {target}: {e}", counted=True)
        return self._accept(table)

    def _check_forward(self, target: str) -> None:
        if self.version == "latest":  # a pinned version is the operator's explicit choice
            self.store.check_forward(target, served=self.table.version_id if self.table is not None else None)

    def _record(self) -> str:
        """The rollback record as a comparable value (its problem, when it cannot be read)."""
        try:
            return repr(self.store.rollback_record())
        except (ControllerError, OSError) as e:
            return f"unreadable: {e}"

    def _load(self, version_id: str, validate: Callable[[Table], None] | None) -> Table:
        table = self.store.load(version_id)
        if not table.all_knobs():
            raise ControllerError(f"table {version_id} holds no configs")
        if validate is not None:
            validate(table)
        return table

    def _accept(self, table: Table) -> tuple[Outcome, Table | None]:
        self.accepted += 1
        self.last_error = None
        self.table = table
        self.loaded_at = _iso(self.clock())
        self.loaded_from = self.store.source(table.version_id)
        return "accepted", table

    def _reject(self, key: str, reason: str, *, remember: bool = True) -> None:
        if remember:
            self._rejected_ids.add(key)
        self.rejected += 1
        self.last_rejection = Rejection(key, reason, _iso(self.clock()))

    def _unavailable(self, why: str, counted: bool) -> tuple[Outcome, Table | None]:
        """The store could not be read (or is empty): nothing is rejected, the next poll tries
        again. Read failures (timeouts, I/O errors) are counted; an empty store is not."""
        self.last_error = why
        self.read_failures += counted
        return "unavailable", None

    def _bad_pointer(self, why: str, validate: Callable[[Table], None] | None) -> tuple[Outcome, Table | None]:
        """LATEST holds no version id (a path, NUL bytes, binary): one rejection per distinct
        problem, the table in use stays."""
        key = f"LATEST: {why}"
        if key in self._rejected_ids:
            return "unchanged", None
        self._reject("LATEST", why)
        self._rejected_ids.add(key)
        if self.table is None:
            return self._start_with_newest_valid(validate)
        return "rejected", None

    def _start_with_newest_valid(self, validate: Callable[[Table], None] | None) -> tuple[Outcome, Table | None]:
        """A replica that starts while LATEST is bad serves the newest version that passes, rather
        than nothing (which would fail its health check in a loop); the rejection stays visible."""
        skip = set(self._rejected_ids)
        for _ in range(5):
            try:
                candidate = self.store.newest_valid(skip=skip)
            except (ControllerError, OSError) as e:
                self.last_error = f"looking for an earlier valid version: {e}"
                return "rejected", None
            if candidate is None:
                return "rejected", None
            try:
                if validate is not None:
                    validate(candidate)
            except ControllerError:
                skip.add(candidate.version_id)
                continue
            log.warning("TableWatcher: LATEST unusable; serving the newest valid version %s", candidate.version_id)
            return self._accept(candidate)
        return "rejected", None

    def status(self) -> dict[str, Any]:
        return {
            "table_version": self.table.version_id if self.table else None,
            "sha256": self.table.sha256 if self.table else None,
            "loaded_at": self.loaded_at,
            "loaded_from": self.loaded_from,
            "store": self.store.location,
            "version_requested": self.version,
            "last_rejection": self.last_rejection.to_dict() if self.last_rejection else None,
            "last_error": self.last_error,
            "reloads_accepted": self.accepted,
            "reloads_rejected": self.rejected,
            "read_failures": self.read_failures,
        }
