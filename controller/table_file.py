"""The table file: versioned JSON with a sha256 of its canonical content, checked on load.
Also reads the reference implementation's own table JSON so existing checkpoints keep working."""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from controller.errors import ControllerError, TableLimitError, TableLoadError
from controller.knobs import Knobs
from controller.params import BuildParams
from controller.stats import ConfigStats
from controller.table import GLOBAL_SCOPE, Scope, Table, register_codec

FORMAT = "moe-budget-controller/lookup-table"
SCHEMA_VERSION = 1

# Table limits (docs/serving.md, "Table limits"). A table of 92,160 configs in 30 scopes (55 MB)
# loaded fine but raised the controller's RSS by 275 MB and each router's by 200 MB and slowed
# requests during the swap (p99 237 ms); the bundled sample's table is 156 configs in 4 scopes (95 kB).
# The byte limit is checked before the JSON is parsed and the counts before it becomes objects,
# so a refusal costs little.
MAX_FILE_BYTES = 16 * 1024 * 1024
MAX_SCOPES = 64
MAX_CONFIGS = 16_384  # over all scopes: what the controller, each router and /v1/stats hold


class _ConfigRecord(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    tier: Literal["low", "medium", "high"]
    top_k: int = Field(ge=1)
    num_active_blocks: int = Field(ge=1)
    num_samples: int = Field(ge=1)
    # Accuracy is a share in [0, 1]; latencies are finite (allow_inf_nan=False) and positive.
    accuracy: float = Field(ge=0, le=1)
    latency_ms: float = Field(gt=0)
    accuracy_std: float = Field(ge=0)
    latency_std: float = Field(ge=0)
    accuracy_mean: float | None = Field(default=None, ge=0, le=1)
    accuracy_median: float | None = Field(default=None, ge=0, le=1)
    latency_mean: float | None = Field(default=None, gt=0)
    latency_median: float | None = Field(default=None, gt=0)
    latency_min: float | None = Field(default=None, gt=0)
    latency_max: float | None = Field(default=None, gt=0)
    latency_p90: float | None = Field(default=None, gt=0)
    latency_p95: float | None = Field(default=None, gt=0)
    latency_p99: float | None = Field(default=None, gt=0)
    # Optional, so that table files written before decode statistics existed still load.
    decode_ms_per_token: float | None = Field(default=None, gt=0)


class _ScopeRecord(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    datasets: list[str]
    configs: list[_ConfigRecord] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_configs(self) -> _ScopeRecord:
        keys = [(c.tier, c.top_k, c.num_active_blocks) for c in self.configs]
        if len(set(keys)) != len(keys):
            dup = next(k for k in keys if keys.count(k) > 1)
            raise ValueError(f"config {dup} appears twice")
        return self


class _TableRecord(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    format: Literal["moe-budget-controller/lookup-table"]
    schema_version: Literal[1]
    version_id: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:-]+$")
    created_at: str
    build: BuildParams
    source: dict[str, Any]
    scopes: dict[str, _ScopeRecord]
    sha256: str

    @model_validator(mode="after")
    def _has_global(self) -> _TableRecord:
        if GLOBAL_SCOPE not in self.scopes:
            raise ValueError(f"no '{GLOBAL_SCOPE}' scope")
        return self


# --- writing ---------------------------------------------------------------------------------------

def canonical_bytes(content: dict[str, Any]) -> bytes:
    return json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode()


def content_sha256(content: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_bytes({k: v for k, v in content.items() if k != "sha256"})).hexdigest()


def utc_now_iso() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _unsigned_dict(table: Table) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "schema_version": SCHEMA_VERSION,
        "version_id": table.version_id,
        "created_at": table.created_at,
        "build": table.build.model_dump(),
        "source": table.source,
        "scopes": {
            name: {
                "datasets": list(table.scope_map[name].datasets),
                "configs": [c.to_record() for c in table.scope_map[name].configs],
            }
            for name in table.scopes
        },
    }


def table_to_dict(table: Table) -> dict[str, Any]:
    content = _unsigned_dict(table)
    content["sha256"] = content_sha256(content)
    return content


def table_to_bytes(table: Table) -> bytes:
    return json.dumps(table_to_dict(table), indent=1, allow_nan=False).encode() + b"\n"


def make_table(scopes: dict[str, Scope], build: BuildParams, source: dict[str, Any],
               *, version_id: str | None = None, created_at: str | None = None) -> Table:
    """A new table with its sha256 computed; the default version id sorts by creation time."""
    created = created_at or utc_now_iso()
    draft = Table(version_id="draft", created_at=created, build=build, source=source, scope_map=scopes)
    body = _unsigned_dict(draft)
    if version_id is None:
        digest = hashlib.sha256(canonical_bytes({"b": body["build"], "s": body["scopes"]})).hexdigest()
        stamp = created.replace("-", "").replace(":", "").replace(".", "")
        version_id = f"{stamp}-{digest[:8]}"
    body["version_id"] = version_id
    return Table(version_id, created, build, source, scopes, content_sha256(body))


def restamp(table: Table, *, version_id: str) -> Table:
    body = _unsigned_dict(table)
    body["version_id"] = version_id
    sha = content_sha256(body)
    return Table(version_id, table.created_at, table.build, table.source, table.scope_map, sha, table.origin)


def atomic_write(path: Path, data: bytes) -> None:
    """Temp file in the same folder, fsync, rename, fsync the folder: readers see the old file or
    the new one, and the rename itself survives a crash."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def save_table(table: Table, path: str | Path) -> Path:
    out = Path(path)
    atomic_write(out, table_to_bytes(table))
    return out


# --- reading ---------------------------------------------------------------------------------------

def load_table(path: str | Path) -> Table:
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise TableLoadError(str(p), "file not found") from None
    except IsADirectoryError:
        raise TableLoadError(str(p), "is a directory, not a table file") from None
    except OSError as e:
        raise TableLoadError(str(p), f"cannot read: {e.strerror or e}") from e
    return table_from_bytes(data, str(p))


def check_limits(raw: dict[str, Any], source: str) -> None:
    """TableLimitError for a parsed table over MAX_SCOPES or MAX_CONFIGS (either format); shapes
    the schema would refuse are left to the schema."""
    if "config_table" in raw and "format" not in raw:
        configs = raw["config_table"]
        if isinstance(configs, dict) and len(configs) > MAX_CONFIGS:
            raise TableLimitError(source, "configs", len(configs), MAX_CONFIGS)
        return
    scopes = raw.get("scopes")
    if not isinstance(scopes, dict):
        return
    if len(scopes) > MAX_SCOPES:
        raise TableLimitError(source, "scopes", len(scopes), MAX_SCOPES)
    total = sum(len(s["configs"]) for s in scopes.values()
                if isinstance(s, dict) and isinstance(s.get("configs"), list))
    if total > MAX_CONFIGS:
        raise TableLimitError(source, "configs", total, MAX_CONFIGS)


def table_from_bytes(data: bytes, source: str) -> Table:
    if len(data) > MAX_FILE_BYTES:  # before parsing: the parse is what costs
        raise TableLimitError(source, "bytes", len(data), MAX_FILE_BYTES)
    if not data.strip():
        raise TableLoadError(source, "file is empty")
    try:
        raw = json.loads(data)  # NaN is read (the reference format writes it); the checks below refuse it
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise TableLoadError(source, f"not valid JSON ({e})") from e
    except RecursionError:
        raise TableLoadError(source, "not valid JSON (nested too deeply)") from None
    except ValueError as e:  # e.g. an integer of thousands of digits
        raise TableLoadError(source, f"not valid JSON ({str(e)[:200]})") from None
    if not isinstance(raw, dict):
        raise TableLoadError(source, f"expected a JSON object, found {type(raw).__name__}")
    check_limits(raw, source)
    try:
        if "config_table" in raw and "format" not in raw:
            return _from_reference_format(raw, source, data)
        return _from_native(raw, source)
    except TableLoadError:
        raise
    except (ValueError, TypeError, OverflowError, RecursionError) as e:
        # A value the schema let through that the checksum or the stats cannot take (1e400 read as
        # inf, a nested structure too deep to hash): the file is refused, never a crash of its reader.
        raise TableLoadError(source, f"unusable content ({type(e).__name__}: {str(e)[:200]})") from None


def _from_native(raw: dict[str, Any], source: str) -> Table:
    try:
        rec = _TableRecord.model_validate(raw)
    except ValidationError as e:
        raise TableLoadError(source, f"schema error: {_first_errors(e)}") from e
    actual = content_sha256(raw)
    if actual != rec.sha256:
        raise TableLoadError(source, f"checksum mismatch: file says sha256 {rec.sha256[:12]}..., "
                                     f"content hashes to {actual[:12]}... (file altered or truncated)")
    scopes = {
        name: Scope(name, s.datasets, [ConfigStats.from_record(c.model_dump()) for c in s.configs])
        for name, s in rec.scopes.items()
    }
    return Table(rec.version_id, rec.created_at, rec.build, rec.source, scopes, rec.sha256, origin=source)


def _first_errors(e: ValidationError, limit: int = 3) -> str:
    parts = []
    for err in e.errors()[:limit]:
        loc = ".".join(str(x) for x in err["loc"]) or "(top level)"
        parts.append(f"{loc}: {err['msg']}")
    more = len(e.errors()) - limit
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _from_reference_format(raw: dict[str, Any], source: str, data: bytes) -> Table:
    """The reference implementation's file: config_table keyed "tier_k_n", lookup_table (derived,
    ignored), statistics, metadata. Configs with a NaN accuracy (its mean-of-NaN bug) are dropped."""
    table = raw["config_table"]
    if not isinstance(table, dict):
        raise TableLoadError(source, "config_table is not an object")
    configs: list[ConfigStats] = []
    dropped: dict[str, int] = {}
    for key, info in table.items():
        try:
            tier, k, n = str(key).split("_")
            knobs = Knobs(tier, int(k), int(n))
        except (ValueError, ControllerError):
            dropped["bad_config_key"] = dropped.get("bad_config_key", 0) + 1
            continue
        if not isinstance(info, dict) or not _finite(info.get("accuracy")) or not _finite(info.get("latency")) \
                or info["latency"] <= 0 or not 0 <= info["accuracy"] <= 1:
            dropped["nonfinite_config"] = dropped.get("nonfinite_config", 0) + 1
            continue
        n_samples = info.get("num_samples", 1)
        configs.append(ConfigStats(
            knobs=knobs,
            num_samples=int(n_samples) if _finite(n_samples) and n_samples >= 1 else 1,
            accuracy=float(info["accuracy"]),
            latency_ms=float(info["latency"]),
            accuracy_std=float(info["accuracy_std"]) if _finite(info.get("accuracy_std")) else 0.0,
            latency_std=float(info["latency_std"]) if _finite(info.get("latency_std")) else 0.0,
        ))
    if not configs:
        raise TableLoadError(source, "reference-format table has no usable configs")
    meta: dict[str, Any] = raw["metadata"] if isinstance(raw.get("metadata"), dict) else {}
    try:
        build = BuildParams(
            aggregation_method=meta.get("aggregation_method", "mean"),
            tolerance=meta.get("tolerance", 0.05),
            latency_metric="prefill" if meta.get("use_prefill_only", True) else "total",
        )
    except ValidationError as e:
        raise TableLoadError(source, f"reference-format metadata: {_first_errors(e)}") from e
    src: dict[str, Any] = {"imported_from": "reference lookup_table_baseline format", "path": source,
           "file_sha256": hashlib.sha256(data).hexdigest(), "dropped": dropped}
    digest = hashlib.sha256(data).hexdigest()
    t = make_table({GLOBAL_SCOPE: Scope(GLOBAL_SCOPE, [], configs)}, build, src,
                   version_id=f"seed-{digest[:12]}", created_at="1970-01-01T00:00:00.000000Z")
    return Table(t.version_id, t.created_at, t.build, t.source, t.scope_map, t.sha256, origin=source)


class _Codec:
    """What Table's file methods delegate to (see controller.table.register_codec)."""

    load = staticmethod(load_table)
    from_bytes = staticmethod(table_from_bytes)
    to_bytes = staticmethod(table_to_bytes)
    to_dict = staticmethod(table_to_dict)
    save = staticmethod(save_table)

    @staticmethod
    def restamp(table: Table, version_id: str) -> Table:
        return restamp(table, version_id=version_id)


register_codec(_Codec())
