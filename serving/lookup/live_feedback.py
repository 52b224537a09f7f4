"""The LookupController's live latency: observations in, per-config sketches over a window,
snapshots to the store, and the automatic recalibration rule. No Ray here (unit-testable); the
deployment calls it and does the I/O off its event loop."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from controller import Table
from controller.errors import LiveDataError
from controller.live_files import write_snapshot
from controller.live_latency import LiveWindow, Observation, snapshot
from controller.recalibrate import drift, recalibrate
from controller.store import REMOTE_SCHEMES, TableStore
from serving.config import AutoRecalibrateSettings, FeedbackSettings

log = logging.getLogger("ray.serve")
MAX_OBSERVATIONS_PER_CALL = 10_000


@dataclass
class AutoState:
    """When drift began (None: not drifting) and when this replica last published."""

    drift_since: float | None = None
    last_publish: float | None = None


def should_publish(state: AutoState, now: float, drifts: dict[str, float], settings: AutoRecalibrateSettings,
                   rollback_in_effect: bool) -> bool:
    """Drift beyond the share on any config, for long enough, outside the cooldown, and no rollback
    in effect (an operator's rollback is not undone by the next automatic publish). Mutates state."""
    if not settings.enabled or not any(abs(d) > settings.drift_share for d in drifts.values()):
        state.drift_since = None
        return False
    if state.drift_since is None:
        state.drift_since = now
    if now - state.drift_since < settings.drift_for_s or rollback_in_effect:
        return False
    return state.last_publish is None or now - state.last_publish >= settings.cooldown_s


class LiveFeedback:
    def __init__(self, settings: FeedbackSettings, store: str, replica: str, sign_key: bytes | None = None) -> None:
        # sign_key: the controller's verify key (HMAC: the same secret signs), so that a store that
        # serves only signed versions serves the automatic ones too.
        self.settings, self.store, self.replica, self.sign_key = settings, store, replica, sign_key
        self.window = LiveWindow(settings.window_s, settings.relative_accuracy)
        self.auto = AutoState()
        self.accepted = 0
        self.refused: Counter[str] = Counter()  # reason -> count; reasons are a fixed set
        self.auto_publishes: list[str] = []
        self.last_drift: dict[str, float] = {}
        self.last_error: str | None = None
        # record() runs on the replica's event loop, snapshots and publishes in a worker thread.
        self._lock = threading.Lock()

    def record(self, raw: Any, table: Table | None) -> int:
        """Validate and add observations; only configs of the served table are kept (the set of
        config tags stays the table's). Returns how many were accepted."""
        if not isinstance(raw, list):
            self.refused["not_a_list"] += 1
            return 0
        known = set(table.all_knobs()) if table is not None else set()
        good: list[Observation] = []
        for item in raw[:MAX_OBSERVATIONS_PER_CALL]:
            try:
                o = Observation.from_dict(item)
            except LiveDataError:
                self.refused["invalid"] += 1
                continue
            if o.knobs not in known:
                self.refused["config_not_in_table"] += 1
                continue
            good.append(o)
        self.refused["too_many"] += max(0, len(raw) - MAX_OBSERVATIONS_PER_CALL)
        with self._lock:
            n = self.window.add(good, time.time())
            self.accepted += n
        return n

    def live(self) -> dict[Any, Any]:
        with self._lock:
            return self.window.merged(time.time())

    def snapshot_dict(self) -> dict[str, Any]:
        now = time.time()
        live = self.live()
        with self._lock:
            start = self.window.start(now)
        return snapshot(live, replica=self.replica, window_s=self.settings.window_s,
                        start_unix=start, end_unix=now,
                        relative_accuracy=self.settings.relative_accuracy)

    def write(self) -> None:
        """Blocking (file I/O): call from a thread. Object stores keep no snapshot (see live_files)."""
        if self.store.startswith(REMOTE_SCHEMES):
            return
        # Signed with the controllers' key, so that `lookupctl recalibrate --sign-key-file` trusts it.
        write_snapshot(self.store, self.replica, self.snapshot_dict(), self.sign_key)

    def flush(self, table: Table | None) -> tuple[str | None, list[str]]:
        """Blocking: write this replica's snapshot, then (automatic mode) publish if drift held.
        The two fail apart: a store that refuses the snapshot file must not stop a publish of
        what was measured. Returns (the published version id or None, what failed)."""
        errors: list[str] = []
        try:
            self.write()
        except Exception as e:  # noqa: BLE001 - reported by the caller, the step goes on
            errors.append(f"snapshot: {type(e).__name__}: {e}")
        published = None
        try:
            published = self.maybe_publish(table)
        except Exception as e:  # noqa: BLE001 - reported by the caller
            errors.append(f"publish: {type(e).__name__}: {e}")
        return published, errors

    def maybe_publish(self, table: Table | None) -> str | None:
        """Blocking (store I/O): the automatic mode. Returns the published version id, if any."""
        if table is None:
            return None
        live = self.live()
        self.last_drift = drift(table, live, min_samples=self.settings.min_samples)
        store = TableStore(self.store)
        latest = store.latest_id()
        newest = store.newest_id()
        # Published or rolled back meanwhile: judge again against what LATEST serves. (A planted
        # name in versions/ is no publish id and does not count as newer: it cannot pause this.)
        stale = latest != table.version_id
        rollback = newest is not None and latest != newest
        now = time.monotonic()
        if not should_publish(self.auto, now, self.last_drift, self.settings.auto, rollback) or stale:
            return None
        with self._lock:
            start = self.window.start(time.time())
        window = {"window_s": self.settings.window_s, "start_unix": start,
                  "end_unix": time.time(), "replicas": [self.replica]}
        new = recalibrate(table, live, min_samples=self.settings.min_samples, window=window, trigger="automatic",
                          notes={"drift_p95": {k: round(v, 4) for k, v in self.last_drift.items()}})
        published = store.publish(new, sign_key=self.sign_key)
        self.auto.last_publish, self.auto.drift_since = now, None
        self.auto_publishes.append(published.version_id)
        log.warning("LookupController %s: automatic recalibration published %s (p95 drift %s)",
                    self.replica, published.version_id, self.last_drift)
        return published.version_id

    def status(self) -> dict[str, Any]:
        live = self.live()
        return {
            "window_s": self.settings.window_s,
            "min_samples": self.settings.min_samples,
            "accepted": self.accepted,
            "refused": dict(self.refused),
            "auto": {"enabled": self.settings.auto.enabled, "drift_share": self.settings.auto.drift_share,
                     "drift_for_s": self.settings.auto.drift_for_s, "drifting_since_monotonic": self.auto.drift_since,
                     "publishes": list(self.auto_publishes[-20:])},
            "drift_p95": self.last_drift,
            "last_error": self.last_error,
            "configs": {k.key: v.summary() for k, v in sorted(live.items(), key=lambda kv: kv[0].sort_key)},
        }
