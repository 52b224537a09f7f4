"""What `/v1/table` and `/v1/stats` may show: bounded, and without internals.

Controller statuses carry absolute store paths, the build's source (results_dir, possibly large),
and Ray error texts with actor ids, pids and node addresses. Those stay in the replicas' logs; the
HTTP answer keeps versions, counts and reasons, with paths cut to their file names.
"""

from __future__ import annotations

import os
import re
from typing import Any

MAX_TEXT = 300
MAX_FRONTIER = 64
MAX_DATASETS = 50
_PATH = re.compile(r"(?:[A-Za-z][A-Za-z0-9+.-]*://)?/[^\s'\",;:()]+")


def scrub(text: Any) -> str | None:
    """A message without absolute paths (kept as their last part), cut to MAX_TEXT characters."""
    if text is None:
        return None
    out = _PATH.sub(lambda m: os.path.basename(m.group(0).rstrip("/")) or "/", str(text))
    return out if len(out) <= MAX_TEXT else out[:MAX_TEXT] + "..."


def table_summary(summary: dict[str, Any] | None) -> dict[str, Any] | None:
    if not summary:
        return None
    scopes = {}
    for name, s in list(summary.get("scopes", {}).items())[:MAX_DATASETS]:
        frontier = s.get("frontier", [])
        scopes[name] = {
            "datasets": s.get("datasets", [])[:MAX_DATASETS],
            "num_configs": s.get("num_configs"),
            "frontier": frontier[:MAX_FRONTIER],
            "frontier_truncated": len(frontier) > MAX_FRONTIER,
        }
    return {
        "version_id": summary.get("version_id"),
        "sha256": summary.get("sha256"),
        "created_at": summary.get("created_at"),
        "build": summary.get("build"),
        # Only the names of what the table was built from: values hold paths and can be large.
        "source_keys": sorted(str(k)[:64] for k in (summary.get("source") or {}))[:20],
        "scopes": scopes,
    }


def controller_status(status: dict[str, Any]) -> dict[str, Any]:
    if "error" in status:
        return {"error": "the controller did not answer in time; see the router's log"}
    rejection = status.get("last_rejection")
    loaded_from = status.get("loaded_from")
    return {
        "replica_id": status.get("replica_id"),
        "table_version": status.get("table_version"),
        "sha256": status.get("sha256"),
        "loaded_at": status.get("loaded_at"),
        "loaded_from": os.path.basename(loaded_from) if loaded_from else None,
        "version_requested": status.get("version_requested"),
        "reloads_accepted": status.get("reloads_accepted"),
        "reloads_rejected": status.get("reloads_rejected"),
        "read_failures": status.get("read_failures"),
        "last_rejection": {
            "version_id": scrub(rejection.get("version_id")),
            "reason": scrub(rejection.get("reason")),
            "at": rejection.get("at"),
        }
        if rejection
        else None,
        "last_error": scrub(status.get("last_error")),
        "poll_interval_s": status.get("poll_interval_s"),
        "serving_since_unix": status.get("serving_since_unix"),
        "answered_in_ms": status.get("answered_in_ms"),
        "summary": table_summary(status.get("summary")),
    }


def local_table_status(status: dict[str, Any] | None) -> dict[str, Any] | None:
    if status is None:
        return None
    error = status.get("last_error")
    # The router's sync errors are Ray errors (actor ids, addresses): their type name is enough here.
    return {**status, "last_error": str(error).split(":", 1)[0] if error else None}
