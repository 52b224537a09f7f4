"""Legal but large table files (many scopes, many configs), written as bytes: building them as
Table objects is the cost the limits keep out of the controller (issue 19, item 8)."""

from __future__ import annotations

import json
from pathlib import Path

from controller.knobs import TIERS
from controller.store import LATEST
from controller.table_file import content_sha256
from tests.support.tables import synthetic_table


def big_table_bytes(scopes: int, configs_per_scope: int, version_id: str) -> bytes:
    """A well-formed, correctly checksummed table file: `scopes` scopes (global + datasets d1..)
    of `configs_per_scope` distinct configs each. (30, 3072) is the issue's 92,160-config, 55 MB one."""
    raw = json.loads(synthetic_table().to_json_bytes())
    record = raw["scopes"]["global"]["configs"][0]
    configs = [
        dict(record, tier=TIERS[i % 3], top_k=1 + i // 3, latency_ms=record["latency_ms"] + i * 0.01)
        for i in range(configs_per_scope)
    ]
    names = [f"d{j}" for j in range(1, scopes)]
    raw["scopes"] = {"global": {"datasets": names, "configs": configs}}
    raw["scopes"].update({n: {"datasets": [n], "configs": configs} for n in names})
    raw["version_id"] = version_id
    raw["sha256"] = content_sha256(raw)
    return json.dumps(raw, indent=1).encode() + b"\n"


def plant_version(store_dir: Path, version_id: str, data: bytes) -> None:
    """What a publisher without `lookupctl publish` (which refuses such a table) could leave."""
    (store_dir / "versions" / f"{version_id}.json").write_bytes(data)
    (store_dir / LATEST).write_text(version_id + "\n")
