"""Decides whether the store holds a table that should replace the one being served (no Ray here)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any, Literal

from controller import Table
from controller.errors import ControllerError
from controller.store import TableStore

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
        # Versions are immutable once published, so a rejected id is not read again every poll.
        self._rejected_ids: set[str] = set()

    def retarget(self, store: TableStore, version: str) -> None:
        self.store, self.version = store, version
        self._rejected_ids.clear()

    def check(self) -> tuple[Outcome, Table | None]:
        """Returns ("accepted", new_table) when a new valid version should be swapped in."""
        try:
            target = self.store.resolve_id(self.version)
        except (ControllerError, OSError) as e:
            self.last_error = str(e)
            return "unavailable", None
        if self.table is not None and self.loaded_from == self.store.source(target):
            return "unchanged", None
        if target in self._rejected_ids:
            return "unchanged", None
        try:
            table = self.store.load(target)
            if not table.all_knobs():
                raise ControllerError(f"table {target} holds no configs")
        except ControllerError as e:
            self._rejected_ids.add(target)
            self.rejected += 1
            self.last_rejection = Rejection(target, str(e), _iso(self.clock()))
            return "rejected", None
        except OSError as e:
            self.last_error = f"reading version {target}: {e}"
            return "unavailable", None
        self.accepted += 1
        self.last_error = None
        self.table = table
        self.loaded_at = _iso(self.clock())
        self.loaded_from = self.store.source(target)
        return "accepted", table

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
        }
