"""Live-latency snapshots in the table store folder: `live/<replica>.json`, one per controller
replica, rewritten atomically; `lookupctl recalibrate` merges the fresh ones. Local and shared
filesystem stores only (object stores: recalibrate from a replica's automatic mode instead)."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

from controller.errors import LiveDataError, StoreError
from controller.live_latency import Snapshot, read_snapshot
from controller.store import REMOTE_SCHEMES
from controller.table_file import atomic_write

LIVE_DIR = "live"
MAX_SNAPSHOT_BYTES = 32 * 1024 * 1024


def _live_dir(store: str) -> Path:
    if store.startswith(REMOTE_SCHEMES):
        raise StoreError(
            f"live snapshots are kept only in filesystem stores, not {store.split('://')[0]}://; "
            "use automatic recalibration in the LookupController for object stores"
        )
    return Path(store).expanduser() / LIVE_DIR


def write_snapshot(store: str, replica: str, snap: dict[str, Any]) -> Path:
    name = re.sub(r"[^A-Za-z0-9._-]", "_", replica)[:100] or "replica"
    path = _live_dir(store) / f"{name}.json"
    atomic_write(path, json.dumps(snap, allow_nan=False).encode())
    return path


def read_snapshots(store: str, max_age_s: float, now: float | None = None) -> tuple[list[Snapshot], list[str]]:
    """(fresh valid snapshots, one line per file skipped and why). A bad file never stops the rest."""
    now = time.time() if now is None else now
    folder = _live_dir(store)
    good: list[Snapshot] = []
    skipped: list[str] = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            if path.stat().st_size > MAX_SNAPSHOT_BYTES:
                raise LiveDataError(f"larger than {MAX_SNAPSHOT_BYTES} bytes")
            snap = read_snapshot(json.loads(path.read_bytes()))
        except (OSError, ValueError, RecursionError) as e:  # LiveDataError is a ValueError
            skipped.append(f"{path.name}: {e}")
            continue
        if now - snap.end_unix > max_age_s:
            skipped.append(f"{path.name}: older than {max_age_s:g} s")
            continue
        good.append(snap)
    return good, skipped
