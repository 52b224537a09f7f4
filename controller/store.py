"""Versioned table store: `versions/<id>.json` files plus an atomically moved `LATEST` pointer."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from controller.errors import StoreError, TableLoadError
from controller.optional import require
from controller.table_file import atomic_write

if TYPE_CHECKING:
    from controller.table import Table

LATEST = "LATEST"
VERSIONS_DIR = "versions"
REMOTE_SCHEMES = ("s3://", "gs://", "gcs://", "memory://")


def new_version_id(now: datetime, sha256: str) -> str:
    """Fixed-width UTC timestamp first, so that plain string order is publish order."""
    return f"{now.astimezone(timezone.utc):%Y%m%dT%H%M%S%fZ}-{sha256[:8]}"


def _validate_id(version_id: str) -> str:
    bad = not version_id or "/" in version_id or "\\" in version_id or version_id.startswith(".")
    if bad or version_id != version_id.strip():
        raise StoreError(
            f"version id {version_id!r} is not valid; expected a name like 20250101T120000000000Z-1a2b3c4d"
        )
    return version_id


@dataclass(frozen=True)
class VersionInfo:
    version_id: str
    created_at: str
    sha256: str
    num_configs: int
    is_latest: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "version_id": self.version_id,
            "created_at": self.created_at,
            "sha256": self.sha256,
            "configs": self.num_configs,
            "latest": self.is_latest,
        }


class _LocalFS:
    """A local or shared-filesystem directory. Writes are temp file + fsync + rename, so a reader
    sees the old content or the new one, never a mix."""

    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(os.path.expanduser(root))

    def path(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    def read(self, rel: str) -> bytes:
        with open(self.path(rel), "rb") as f:
            return f.read()

    def exists(self, rel: str) -> bool:
        return os.path.exists(self.path(rel))

    def write_atomic(self, rel: str, data: bytes) -> None:
        atomic_write(Path(self.path(rel)), data)

    def list(self, rel: str) -> list[str]:
        try:
            return sorted(os.listdir(self.path(rel)))
        except FileNotFoundError:
            return []


class _FsspecFS:
    """Object storage through fsspec. One PUT of an object is atomic there, so `LATEST` needs no
    rename (which object stores emulate with copy + delete)."""

    def __init__(self, root: str) -> None:
        fsspec = require("fsspec", "store")
        self.root = root.rstrip("/")
        self.fs, _ = fsspec.core.url_to_fs(self.root)

    def path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def read(self, rel: str) -> bytes:
        try:
            return bytes(self.fs.cat_file(self.path(rel)))
        except FileNotFoundError:
            raise
        except KeyError as e:  # some in-memory backends raise KeyError for a missing object
            raise FileNotFoundError(self.path(rel)) from e

    def exists(self, rel: str) -> bool:
        return bool(self.fs.exists(self.path(rel)))

    def write_atomic(self, rel: str, data: bytes) -> None:
        self.fs.pipe_file(self.path(rel), data)

    def list(self, rel: str) -> list[str]:
        try:
            entries = self.fs.ls(self.path(rel), detail=False)
        except FileNotFoundError:
            return []
        return sorted(str(e).rstrip("/").rsplit("/", 1)[-1] for e in entries)


class TableStore:
    """Publish, list, load and roll back table versions. Works on a local/shared path, or on
    s3:// and gs:// through fsspec (the `store` extra). Multi-node clusters need a location that
    every node can read."""

    def __init__(self, location: str) -> None:
        if not location:
            raise StoreError("store location is empty; pass a directory or an s3:// or gs:// URL")
        self.location = location
        remote = location.startswith(REMOTE_SCHEMES)
        self._fs: _LocalFS | _FsspecFS = _FsspecFS(location) if remote else _LocalFS(location)

    def __repr__(self) -> str:
        return f"TableStore({self.location!r})"

    # -- reading ---------------------------------------------------------------------------------

    def latest_id(self) -> str | None:
        """The id LATEST points at, or None for an empty store. Cheap: one small read."""
        try:
            raw = self._fs.read(LATEST)
        except FileNotFoundError:
            return None
        version_id = raw.decode("utf-8", errors="replace").strip()
        return version_id or None

    def version_ids(self) -> list[str]:
        names = self._fs.list(VERSIONS_DIR)
        return sorted(n[: -len(".json")] for n in names if n.endswith(".json") and not n.startswith("."))

    def source(self, version_id: str) -> str:
        return self._fs.path(VERSIONS_DIR, f"{_validate_id(version_id)}.json")

    def read_bytes(self, version_id: str) -> bytes:
        try:
            return self._fs.read(f"{VERSIONS_DIR}/{_validate_id(version_id)}.json")
        except FileNotFoundError:
            known = ", ".join(self.version_ids()[-5:]) or "none"
            raise StoreError(
                f"version {version_id!r} not found in store {self.location}; recent versions: {known}"
            ) from None

    def resolve_id(self, version: str = "latest") -> str:
        """'latest' -> the id LATEST points at; any other value is a pinned id."""
        if version != "latest":
            return _validate_id(version)
        latest = self.latest_id()
        if latest is None:
            raise StoreError(
                f"store {self.location} has no published table; publish one with "
                f"`lookupctl publish TABLE --store {self.location}`"
            )
        return latest

    def load(self, version: str = "latest") -> Table:
        """Load and fully validate one version (TableLoadError on a bad file)."""
        from controller.table import Table

        version_id = self.resolve_id(version)
        table = Table.from_json_bytes(self.read_bytes(version_id), source=self.source(version_id))
        if table.version_id != version_id:
            raise TableLoadError(
                self.source(version_id),
                f"file holds version_id {table.version_id!r}, expected {version_id!r}; "
                "publish tables with `lookupctl publish` rather than copying files into the store",
            )
        return table

    def versions(self) -> list[VersionInfo]:
        """Every version, oldest first. A file that does not load is listed with its problem."""
        latest = self.latest_id()
        infos = []
        for vid in self.version_ids():
            try:
                t = self.load(vid)
                infos.append(VersionInfo(vid, t.created_at, t.sha256, len(t.all_knobs()), vid == latest))
            except (TableLoadError, StoreError) as e:
                infos.append(VersionInfo(vid, f"INVALID: {e}", "", 0, vid == latest))
        return infos

    # -- writing ---------------------------------------------------------------------------------

    def publish(self, table: Table, *, now: datetime | None = None) -> Table:
        """Give the table a new version id, write its file, then move LATEST to it. Returns the
        published table. The table is re-validated from its bytes first: an invalid one is refused."""
        from controller.table import Table

        now = now or datetime.now(timezone.utc)
        version_id = new_version_id(now, table.sha256)
        existing = self.version_ids()
        if existing and version_id <= existing[-1]:
            # Same microsecond or a clock step back: stay strictly after the newest id.
            version_id = _successor(existing[-1], table.sha256)
        published = table.with_version(version_id)
        data = published.to_json_bytes()
        try:
            Table.from_json_bytes(data, source=f"<publish {version_id}>")
        except TableLoadError as e:
            raise StoreError(f"refusing to publish an invalid table: {e.problem}") from e
        self._fs.write_atomic(f"{VERSIONS_DIR}/{version_id}.json", data)
        self._move_latest(version_id)
        return published

    def rollback(self, to: str) -> None:
        """Move LATEST to an existing, valid version."""
        try:
            self.load(to)
        except TableLoadError as e:
            raise StoreError(f"refusing to roll back to {to!r}: {e.problem}") from e
        self._move_latest(to)

    def _move_latest(self, version_id: str) -> None:
        self._fs.write_atomic(LATEST, f"{version_id}\n".encode())


def _successor(version_id: str, sha256: str) -> str:
    stamp = version_id.split("-", 1)[0]
    try:
        when = datetime.strptime(stamp, "%Y%m%dT%H%M%S%fZ").replace(tzinfo=timezone.utc)
    except ValueError:
        raise StoreError(
            f"newest version id {version_id!r} in the store is not a publish timestamp; "
            "publish into an empty store or remove that file"
        ) from None
    return new_version_id(when + timedelta(microseconds=1), sha256)
