"""Versioned table store: `versions/<id>.json` files plus an atomically moved `LATEST` pointer."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from controller.errors import NotAFileError, PointerError, StoreError, StoreReadError, TableLoadError
from controller.signing import SIG_SUFFIX, sign, verify
from controller.store_fs import FsspecFS, LocalFS

if TYPE_CHECKING:
    from controller.table import Table

LATEST = "LATEST"
VERSIONS_DIR = "versions"
REMOTE_SCHEMES = ("s3://", "gs://", "gcs://", "memory://")
# A version id is a file name in versions/: no path separators, no "..", no control bytes.
_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
MAX_LATEST_BYTES = 1024
MAX_TABLE_BYTES = 64 * 1024 * 1024


def short(value: object, limit: int = 64) -> str:
    """repr of a value cut to `limit` characters: errors quote what was wrong, not all of it."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + f"...(+{len(text) - limit} chars)"


def new_version_id(now: datetime, sha256: str) -> str:
    """Fixed-width UTC timestamp first, so that plain string order is publish order."""
    return f"{now.astimezone(timezone.utc):%Y%m%dT%H%M%S%fZ}-{sha256[:8]}"


def _validate_id(version_id: str) -> str:
    if not _ID_RE.fullmatch(version_id) or ".." in version_id:
        raise StoreError(
            f"version id {short(version_id)} is not valid; expected a name like 20250101T120000000000Z-1a2b3c4d "
            "(letters, digits, '.', '_', '-'; at most 128)"
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


@dataclass(frozen=True)
class PublishReport:
    """What a publish did: the table as published, and what LATEST named before and right after
    (read back inside the publish lock, so it is what really became LATEST)."""

    table: Table
    latest_before: str | None
    latest_after: str | None


class TableStore:
    """Publish, list, load and roll back table versions. Works on a local/shared path, or on
    s3:// and gs:// through fsspec (the `store` extra). Multi-node clusters need a location that
    every node can read. Every read has `read_timeout_s`; publishes wait up to `lock_wait_s` for
    one another."""

    def __init__(
        self,
        location: str,
        *,
        read_timeout_s: float = 10.0,
        lock_wait_s: float = 60.0,
        verify_key: bytes | None = None,
    ) -> None:
        if not location:
            raise StoreError("store location is empty; pass a directory or an s3:// or gs:// URL")
        self.location = location
        self.lock_wait_s = lock_wait_s
        # With a key, load() accepts only versions whose .sig is the key's HMAC of the file.
        self.verify_key = verify_key
        remote = location.startswith(REMOTE_SCHEMES)
        self._fs: LocalFS | FsspecFS = (
            FsspecFS(location, read_timeout_s) if remote else LocalFS(location, read_timeout_s)
        )

    def __repr__(self) -> str:
        return f"TableStore({self.location!r})"

    # -- reading ---------------------------------------------------------------------------------

    def latest_id(self) -> str | None:
        """The id LATEST points at, or None for an empty store. Cheap: one small read. StoreError
        when LATEST holds anything but a version id (binary, NUL bytes, a path)."""
        try:
            raw = self._fs.read(LATEST, MAX_LATEST_BYTES)
        except FileNotFoundError:
            return None
        except NotAFileError as e:
            raise PointerError(f"LATEST is not usable: {e}") from None
        try:
            version_id = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise PointerError(f"LATEST holds bytes that are not UTF-8 text: {short(raw)}") from None
        if not version_id:
            return None
        try:
            return _validate_id(version_id)
        except StoreError as e:
            raise PointerError(f"LATEST does not name a version: {e}") from None

    def version_ids(self) -> list[str]:
        names = self._fs.list(VERSIONS_DIR)
        ids = (n[: -len(".json")] for n in names if n.endswith(".json"))
        return sorted(i for i in ids if _ID_RE.fullmatch(i) and ".." not in i)

    def source(self, version_id: str) -> str:
        return self._fs.path(VERSIONS_DIR, f"{_validate_id(version_id)}.json")

    def read_bytes(self, version_id: str) -> bytes:
        try:
            return self._fs.read(f"{VERSIONS_DIR}/{_validate_id(version_id)}.json", MAX_TABLE_BYTES)
        except FileNotFoundError:
            known = ", ".join(self.version_ids()[-5:]) or "none"
            raise StoreError(
                f"version {version_id!r} not found in store {self.location}; recent versions: {known}"
            ) from None
        except NotAFileError as e:
            raise TableLoadError(self.source(version_id), str(e)) from None
        except StoreReadError:
            raise
        except OSError as e:  # permissions, I/O error: name the version, keep the errno text
            raise StoreReadError(f"reading version {version_id}: {e}") from None

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
        data = self.read_bytes(version_id)
        if self.verify_key is not None:
            self._verify(version_id, data, self.verify_key)
        table = Table.from_json_bytes(data, source=self.source(version_id))
        if table.version_id != version_id:
            raise TableLoadError(
                self.source(version_id),
                f"file holds version_id {short(table.version_id)}, expected {version_id!r}; "
                "publish tables with `lookupctl publish` rather than copying files into the store",
            )
        return table

    def _verify(self, version_id: str, data: bytes, key: bytes) -> None:
        rel = f"{VERSIONS_DIR}/{version_id}.json{SIG_SUFFIX}"
        try:
            signature = self._fs.read(rel, 256)
        except (FileNotFoundError, NotAFileError):
            raise TableLoadError(
                self.source(version_id), "is not signed; publish it with `lookupctl publish --sign-key-file KEY`"
            ) from None
        if not verify(key, data, signature):
            raise TableLoadError(self.source(version_id), "signature does not match (not signed with this key)")

    def versions(self) -> list[VersionInfo]:
        """Every version, oldest first. A file that does not load is listed with its problem."""
        try:
            latest = self.latest_id()
        except PointerError as e:
            latest = f"<{e}>"
        infos = []
        for vid in self.version_ids():
            try:
                t = self.load(vid)
                infos.append(VersionInfo(vid, t.created_at, t.sha256, len(t.all_knobs()), vid == latest))
            except (StoreError, TableLoadError, OSError) as e:
                infos.append(VersionInfo(vid, f"INVALID: {e}", "", 0, vid == latest))
        return infos

    def newest_valid(self, skip: set[str] | None = None, limit: int = 20) -> Table | None:
        """The newest version that loads, trying at most `limit` (a controller that starts while
        LATEST is bad serves this rather than nothing)."""
        tried = 0
        for vid in reversed(self.version_ids()):
            if skip and vid in skip:
                continue
            tried += 1
            if tried > limit:
                break
            try:
                return self.load(vid)
            except (StoreError, TableLoadError, OSError):
                continue
        return None

    # -- writing ---------------------------------------------------------------------------------

    def publish(self, table: Table, *, now: datetime | None = None, sign_key: bytes | None = None) -> Table:
        """Give the table a new version id, write its file, then move LATEST to it. Returns the
        published table. The table is re-validated from its bytes first: an invalid one is refused."""
        return self.publish_report(table, now=now, sign_key=sign_key).table

    def publish_report(
        self, table: Table, *, now: datetime | None = None, sign_key: bytes | None = None
    ) -> PublishReport:
        """`publish`, also saying what LATEST named before and after. Publishes are serialised by
        the store's lock and the id is taken inside it, so ids follow the order in which publishes
        got the lock and the last publish to finish leaves LATEST on the newest version."""
        from controller.table import Table

        # Validate outside the lock: it is the slow part and needs no ordering.
        try:
            Table.from_json_bytes(table.with_version("pending").to_json_bytes(), source="<publish>")
        except TableLoadError as e:
            raise StoreError(f"refusing to publish an invalid table: {e.problem}") from e
        with self._fs.publish_lock(self.lock_wait_s):
            before = self._latest_or_none()
            version_id = new_version_id(now or datetime.now(timezone.utc), table.sha256)
            existing = self.version_ids()
            newest = max([v for v in (before, existing[-1] if existing else None) if v], default=None)
            if newest is not None and version_id <= newest:
                # Same microsecond or a clock step back: stay strictly after the newest id.
                version_id = _successor(newest, table.sha256)
            published = table.with_version(version_id)
            data = published.to_json_bytes()
            if sign_key is not None:  # the signature first: LATEST never names an unsigned version
                self._fs.write_new(f"{VERSIONS_DIR}/{version_id}.json{SIG_SUFFIX}", sign(sign_key, data))
            self._fs.write_new(f"{VERSIONS_DIR}/{version_id}.json", data)
            self._move_latest(version_id)
            after = self._latest_or_none()
        return PublishReport(published, before, after)

    def rollback(self, to: str) -> None:
        """Move LATEST to an existing, valid version."""
        try:
            self.load(to)
        except TableLoadError as e:
            raise StoreError(f"refusing to roll back to {to!r}: {e.problem}") from e
        with self._fs.publish_lock(self.lock_wait_s):
            self._move_latest(to)

    def _latest_or_none(self) -> str | None:
        try:
            return self.latest_id()
        except PointerError:  # a bad pointer is replaced by the publish
            return None

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
