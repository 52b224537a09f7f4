"""Live-latency snapshots in the table store folder: `live/<replica>.json`, one per controller
replica, rewritten atomically; `lookupctl recalibrate` merges the fresh ones. Local and shared
filesystem stores only (object stores: recalibrate from a replica's automatic mode instead).

With a key (the controllers' verify key, which also signs tables) a replica writes its snapshot
inside a signed envelope, and a reader given the key takes only snapshots whose HMAC matches:
anyone who can write `live/` could otherwise put latencies of their choosing into a signed table."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

from controller.errors import LiveDataError, StoreError
from controller.live_latency import Snapshot, read_snapshot
from controller.signing import sign, verify
from controller.store import REMOTE_SCHEMES
from controller.table_file import atomic_write

LIVE_DIR = "live"
MAX_SNAPSHOT_BYTES = 32 * 1024 * 1024
# Every replica ever started leaves a file; one not rewritten for this long belongs to a replica that
# is gone (recalibration reads only the last minutes), so writers and `lookupctl prune` remove it.
LIVE_EXPIRE_S = 24 * 3600.0
_ENVELOPE_KEYS = {"signed_snapshot", "hmac"}


def _live_dir(store: str) -> Path:
    if store.startswith(REMOTE_SCHEMES):
        raise StoreError(
            f"live snapshots are kept only in filesystem stores, not {store.split('://')[0]}://; "
            "use automatic recalibration in the LookupController for object stores"
        )
    return Path(store).expanduser() / LIVE_DIR


def snapshot_file_name(replica: str) -> str:
    return (re.sub(r"[^A-Za-z0-9._-]", "_", replica)[:100] or "replica") + ".json"


def write_snapshot(store: str, replica: str, snap: dict[str, Any], sign_key: bytes | None = None,
                   *, expire_s: float = LIVE_EXPIRE_S, now: float | None = None) -> Path:
    """Write this replica's snapshot (signed when a key is given), then remove snapshots of
    replicas not heard from for `expire_s`."""
    payload = json.dumps(snap, allow_nan=False)
    data = payload.encode()
    if sign_key is not None:
        data = json.dumps({"signed_snapshot": payload, "hmac": sign(sign_key, data).decode()}).encode()
    path = _live_dir(store) / snapshot_file_name(replica)
    atomic_write(path, data)
    prune_live(store, expire_s, now=now)
    return path


def prune_live(store: str, older_than_s: float, *, now: float | None = None, dry_run: bool = False) -> list[str]:
    """Remove the snapshot files not rewritten for `older_than_s` (by modification time: no file is
    parsed). Returns their names. A file that vanishes meanwhile (another pruner) is no error."""
    now = time.time() if now is None else now
    folder = _live_dir(store)
    removed: list[str] = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            if now - path.stat().st_mtime <= older_than_s:
                continue
            if not dry_run:
                path.unlink()
        except FileNotFoundError:
            continue
        removed.append(path.name)
    return removed


def _unwrap(raw: Any, verify_key: bytes | None) -> Any:
    """The snapshot dict inside a file: a signed envelope, or (without a key only) a plain one."""
    if isinstance(raw, dict) and set(raw) == _ENVELOPE_KEYS:
        payload, mac = raw["signed_snapshot"], raw["hmac"]
        if not (isinstance(payload, str) and isinstance(mac, str)):
            raise LiveDataError("signed snapshot envelope holds non-string fields")
        if verify_key is not None and not verify(verify_key, payload.encode(), mac.encode()):
            raise LiveDataError("signature does not match (not written by a replica holding this key)")
        return json.loads(payload)
    if verify_key is not None:
        raise LiveDataError("not signed; with a key only snapshots signed by a controller replica count")
    return raw


def read_snapshots(store: str, max_age_s: float, now: float | None = None,
                   verify_key: bytes | None = None) -> tuple[list[Snapshot], list[str]]:
    """(fresh valid snapshots, one line per file skipped and why). A bad file never stops the rest.
    With `verify_key`, unsigned, wrongly signed and renamed snapshots are skipped and listed."""
    now = time.time() if now is None else now
    folder = _live_dir(store)
    good: list[Snapshot] = []
    skipped: list[str] = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            if path.stat().st_size > MAX_SNAPSHOT_BYTES:
                raise LiveDataError(f"larger than {MAX_SNAPSHOT_BYTES} bytes")
            snap = read_snapshot(_unwrap(json.loads(path.read_bytes()), verify_key))
            if verify_key is not None and snapshot_file_name(snap.replica) != path.name:
                # A copy of another replica's signed file would count its samples twice.
                raise LiveDataError(f"signed by replica {snap.replica[:60]!r}, whose file is another")
        except (OSError, ValueError, RecursionError) as e:  # LiveDataError is a ValueError
            skipped.append(f"{path.name}: {e}")
            continue
        if now - snap.end_unix > max_age_s:
            skipped.append(f"{path.name}: older than {max_age_s:g} s")
            continue
        good.append(snap)
    return good, skipped
