"""Versioned table store: `versions/<id>.json` files plus an atomically moved `LATEST` pointer."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from controller.errors import (
    NotAFileError,
    PointerError,
    RollbackRefusedError,
    StoreError,
    StoreLockError,
    StoreReadError,
    TableLoadError,
    VersionExistsError,
)
from controller.rollback_record import MAX_RECORD_BYTES, ROLLBACK_FILE, RollbackRecord
from controller.signing import SIG_SUFFIX, sign, verify
from controller.store_fs import FsspecFS, LocalFS
from controller.version_id import (
    new_version_id,
    newest_ordered,
    orders_versions,
    publish_time,
    short,
    successor,
    validate_id,
)

if TYPE_CHECKING:
    from controller.table import Table

__all__ = ["LATEST", "REMOTE_SCHEMES", "VERSIONS_DIR", "PublishReport", "TableStore", "VersionInfo",
           "new_version_id", "short"]

LATEST = "LATEST"
VERSIONS_DIR = "versions"
REMOTE_SCHEMES = ("s3://", "gs://", "gcs://", "memory://")
MAX_LATEST_BYTES = 1024
MAX_TABLE_BYTES = 64 * 1024 * 1024
# `<id>.json.meta`: what `versions` shows (created, sha256, configs) without parsing the table.
META_SUFFIX = ".meta"
MAX_META_BYTES = 4096
# Versions newer than LATEST whose signatures a forward-move check reads at most (planted files
# must not make every poll read the whole store).
MAX_NEWER_CHECKED = 20
# Tries of a publish's id (a conflict means another publisher made the same id at once) and of the
# LATEST swap (a conflict means another writer moved it first): each retry follows someone's success.
ID_ATTEMPTS = 20
CAS_ATTEMPTS = 100
_validate_id = validate_id


def _wall_clock(now: datetime | None) -> datetime:
    # A publisher may pass an earlier `now` (tests, replays); planted names are judged by the later.
    wall = datetime.now(timezone.utc)
    return wall if now is None else max(now.astimezone(timezone.utc), wall)


@dataclass(frozen=True)
class VersionInfo:
    """One row of `versions`. Without `check`, read cheaply: the metadata publish wrote beside the
    version (`<id>.json.meta`), else what the id itself says; `num_configs` is None when unknown."""

    version_id: str
    created_at: str
    sha256: str
    num_configs: int | None
    is_latest: bool
    # "ok" (verified with the key), "BAD" (a .sig that does not match the key), "unsigned", or
    # "signed" (a .sig is there but no key was given to verify it).
    signature: str = "unsigned"
    # Why the version is not an ordinary one: INVALID (checked), not a publish id, a future stamp.
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "version_id": self.version_id,
            "created_at": self.created_at,
            "sha256": self.sha256,
            "configs": self.num_configs,
            "latest": self.is_latest,
            "signature": self.signature,
            "note": self.note,
        }


@dataclass(frozen=True)
class PublishReport:
    """What a publish did: the table as published, and what LATEST named before and right after
    (read back inside the publish lock, so it is what really became LATEST). `file_id` is the id
    the table came with; `id_note` says why it was not kept, when it was not."""

    table: Table
    latest_before: str | None
    latest_after: str | None
    file_id: str = ""
    id_note: str = ""


@dataclass(frozen=True)
class PruneReport:
    removed: list[str]
    kept: list[str]
    protected: dict[str, str]  # version id -> why it stays whatever --keep says
    not_ordered: list[str]  # names that are not publish ids: left for a person to look at


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
        # With a key, load() accepts only versions whose .sig is the key's HMAC of the file, and
        # LATEST moves back only as a signed rollback record allows (controller/rollback_record.py).
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
            return validate_id(version_id)
        except StoreError as e:
            raise PointerError(f"LATEST does not name a version: {e}") from None

    def version_ids(self) -> list[str]:
        return self._ids(self._fs.list(VERSIONS_DIR))

    @staticmethod
    def _ids(names: list[str]) -> list[str]:
        ids = (n[: -len(".json")] for n in names if n.endswith(".json"))
        return sorted(i for i in ids if _is_id(i))

    def source(self, version_id: str) -> str:
        return self._fs.path(VERSIONS_DIR, f"{validate_id(version_id)}.json")

    def read_bytes(self, version_id: str) -> bytes:
        try:
            return self._fs.read(f"{VERSIONS_DIR}/{validate_id(version_id)}.json", MAX_TABLE_BYTES)
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
            return validate_id(version)
        latest = self.latest_id()
        if latest is None:
            raise StoreError(
                f"store {self.location} has no published table; publish one with "
                f"`lookupctl publish TABLE --store {self.location}`"
            )
        return latest

    def load(self, version: str = "latest") -> Table:
        """Load and fully validate one version (TableLoadError on a bad file). With a verify key,
        'latest' must also be a forward move (RollbackRefusedError otherwise); a pinned id is the
        operator's explicit choice and is not judged by order."""
        from controller.table import Table

        version_id = self.resolve_id(version)
        if version == "latest":
            self.check_forward(version_id)
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
        state = self._signature_state(version_id, data, key)
        if state == "unsigned":
            raise TableLoadError(
                self.source(version_id), "is not signed; publish it with `lookupctl publish --sign-key-file KEY`"
            )
        if state != "ok":
            raise TableLoadError(self.source(version_id), "signature does not match (not signed with this key)")

    def _signature_state(self, version_id: str, data: bytes, key: bytes) -> str:
        try:
            signature = self._fs.read(f"{VERSIONS_DIR}/{version_id}.json{SIG_SUFFIX}", 256)
        except (FileNotFoundError, NotAFileError):
            return "unsigned"
        return "ok" if verify(key, data, signature) else "BAD"

    def has_signature(self, version_id: str) -> bool:
        """A `.sig` is stored beside the version (whatever key made it)."""
        try:
            self._fs.read(f"{VERSIONS_DIR}/{validate_id(version_id)}.json{SIG_SUFFIX}", 256)
        except (FileNotFoundError, NotAFileError):
            return False
        return True

    def _signed_ok(self, version_id: str, key: bytes) -> bool:
        """The version's file carries a valid signature (a missing or odd file is simply not)."""
        try:
            return self._signature_state(version_id, self.read_bytes(version_id), key) == "ok"
        except StoreReadError:
            raise
        except (StoreError, OSError):
            return False

    # -- version order -----------------------------------------------------------------------------

    def rollback_record(self) -> RollbackRecord | None:
        """The record `rollback` wrote last (None: there is none). StoreError when it is unreadable."""
        try:
            data = self._fs.read(ROLLBACK_FILE, MAX_RECORD_BYTES)
        except FileNotFoundError:
            return None
        except NotAFileError as e:
            raise StoreError(f"{ROLLBACK_FILE} is not usable: {e}") from None
        return RollbackRecord.from_bytes(data)

    def check_forward(self, target: str, served: str | None = None) -> None:
        """With a verify key: RollbackRefusedError when `target` is older than the newest signed
        version (in the store, or `served`, which a running controller verified when it loaded it)
        and the signed rollback record does not name it. Without a key, writers are trusted and
        any move is allowed (docs/security.md)."""
        key = self.verify_key
        if key is None:
            return
        newest = served if served is not None and served > target else None
        newer = [v for v in self.version_ids() if v > target and (newest is None or v > newest)]
        for vid in reversed(newer[-MAX_NEWER_CHECKED:]):
            if self._signed_ok(vid, key):
                newest = vid
                break
        if newest is None:
            return
        try:
            record = self.rollback_record()
        except StoreError as e:
            raise RollbackRefusedError(target, newest, f"the rollback record is unusable ({e})") from None
        if record is None:
            why = "there is no rollback record"
        elif not record.signed_by(key):
            why = f"{ROLLBACK_FILE} is not signed with this key"
        elif record.to != target:
            why = f"the signed rollback record moves to {record.to!r}"
        elif not record.authorizes(target, newest):
            why = f"the signed rollback record was made before {newest!r} was published"
        else:
            return
        raise RollbackRefusedError(target, newest, why)

    def newest_id(self) -> str | None:
        """The newest publish id in the store (names that are not publish ids, or stamped far in the
        future, are not counted: one planted file must not look newer than every real version)."""
        return newest_ordered(self.version_ids(), _wall_clock(None))

    # -- listing -----------------------------------------------------------------------------------

    def versions(self, *, check: bool = False) -> list[VersionInfo]:
        """Every version, oldest first, without parsing the tables: metadata from `<id>.json.meta`
        (written by publish) or the id. With a verify key each signature is checked (the bytes are
        hashed, not parsed). `check=True` also loads each one, and lists a bad file's problem."""
        try:
            latest = self.latest_id()
        except PointerError as e:
            latest = f"<{e}>"
        names = set(self._fs.list(VERSIONS_DIR))
        wall = _wall_clock(None)
        infos = []
        for vid in self._ids(sorted(names)):
            note = "" if orders_versions(vid, wall) else _disorder_note(vid)
            signature = self._listed_signature(vid, f"{vid}.json{SIG_SUFFIX}" in names)
            if check:
                try:
                    t = self.load(vid)
                    infos.append(VersionInfo(vid, t.created_at, t.sha256, len(t.all_knobs()), vid == latest,
                                             signature, note))
                except (StoreError, TableLoadError, OSError) as e:
                    infos.append(VersionInfo(vid, f"INVALID: {e}", "", 0, vid == latest, signature, str(e)[:300]))
                continue
            meta = self._meta(vid) if f"{vid}.json{META_SUFFIX}" in names else None
            if meta is not None:
                infos.append(VersionInfo(vid, meta[0], meta[1], meta[2], vid == latest, signature, note))
            else:
                when = publish_time(vid)
                created = when.isoformat().replace("+00:00", "Z") if when is not None else "?"
                infos.append(VersionInfo(vid, created, "", None, vid == latest, signature, note))
        return infos

    def _listed_signature(self, vid: str, has_sig: bool) -> str:
        if not has_sig:
            return "unsigned"
        if self.verify_key is None:
            return "signed"
        try:
            return self._signature_state(vid, self.read_bytes(vid), self.verify_key)
        except StoreReadError:
            raise
        except (StoreError, OSError):
            return "BAD"

    def _meta(self, vid: str) -> tuple[str, str, int] | None:
        """(created_at, sha256, configs) from the metadata file; None when it is missing or odd
        (it is a display aid: the version file stays the truth)."""
        try:
            raw = json.loads(self._fs.read(f"{VERSIONS_DIR}/{vid}.json{META_SUFFIX}", MAX_META_BYTES))
            created, sha, configs = raw["created_at"], raw["sha256"], raw["configs"]
        except StoreReadError:
            raise
        except (OSError, StoreError, ValueError, RecursionError, KeyError, TypeError):
            return None
        if not (isinstance(created, str) and isinstance(sha, str) and type(configs) is int):
            return None
        return created[:64], sha[:64], configs

    def newest_valid(self, skip: set[str] | None = None, limit: int = 20) -> Table | None:
        """The newest version that loads, trying at most `limit` (a controller that starts while
        LATEST is bad serves this rather than nothing). Publish ids first: a planted far-future
        name is tried only after them."""
        ids = self.version_ids()
        wall = _wall_clock(None)
        ordered = [v for v in ids if orders_versions(v, wall)]
        others = [v for v in ids if not orders_versions(v, wall)]
        tried = 0
        for vid in [*reversed(ordered), *reversed(others)]:
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
        """Give the table a version id, write its file, then move LATEST to it. Returns the
        published table. The table is re-validated from its bytes first: an invalid one is refused."""
        return self.publish_report(table, now=now, sign_key=sign_key).table

    def publish_report(
        self, table: Table, *, now: datetime | None = None, sign_key: bytes | None = None
    ) -> PublishReport:
        """`publish`, also saying what LATEST named before and after. On a directory, publishes are
        serialised by the store's lock and the id is taken inside it, so ids follow the order in
        which publishes got the lock and LATEST names each publish in turn. On S3 they run at once:
        LATEST moves by compare-and-swap and only forward, so a publish overtaken by a newer id
        before its swap ends superseded (`latest_after` names the newer one); either way LATEST
        ends on the newest version and no publish is lost (docs/store.md). The table
        keeps the id it was built with (the one `lookupctl build` printed) when that id is a publish
        id newer than every version in the store; otherwise it gets a new one."""
        from controller.table import Table

        # Validate outside the lock: it is the slow part and needs no ordering.
        try:
            Table.from_json_bytes(table.with_version("pending").to_json_bytes(), source="<publish>")
        except TableLoadError as e:
            raise StoreError(f"refusing to publish an invalid table: {e.problem}") from e
        with self._fs.publish_lock(self.lock_wait_s):
            # On S3 there is no lock: publishers that chose the same id race to create its files,
            # and the losers (VersionExistsError) choose again.
            for attempt in range(1, ID_ATTEMPTS + 1):
                before = self._latest_or_none()
                existing = self.version_ids()
                clock = now or datetime.now(timezone.utc)
                # Only publish ids order versions: a planted `zzzz.json` or a far-future stamp is
                # ignored here, so it can never block a publish.
                newest = newest_ordered([before, *existing], _wall_clock(now))
                version_id, id_note = _choose_id(table, clock, newest, set(existing), _wall_clock(now))
                published = table.with_version(version_id)
                data = published.to_json_bytes()
                rel = f"{VERSIONS_DIR}/{version_id}.json"
                written: list[str] = []
                try:
                    if sign_key is not None:  # the signature first: LATEST never names an unsigned version
                        self._write_new(written, rel + SIG_SUFFIX, sign(sign_key, data))
                    meta = {"created_at": published.created_at, "sha256": published.sha256,
                            "configs": len(published.all_knobs()), "bytes": len(data)}
                    self._write_new(written, rel + META_SUFFIX, json.dumps(meta).encode())
                    self._write_new(written, rel, data)
                    break
                except VersionExistsError:
                    for done in written:
                        self._remove(done)
                    if attempt == ID_ATTEMPTS:
                        raise
            after = self._move_latest(version_id, forward_only=True)
        return PublishReport(published, before, after, table.version_id, id_note)

    def rollback(self, to: str, *, sign_key: bytes | None = None, now: datetime | None = None) -> str | None:
        """Write a rollback record (signed with `sign_key`), then move LATEST to `to`, an existing
        valid version (signed with `sign_key` when given). Works whatever LATEST holds: it is the
        repair for a bad pointer. Returns the id LATEST named before (None: none, or not an id)."""
        validate_id(to)
        try:
            data = self.read_bytes(to)
            if sign_key is not None:
                self._verify(to, data, sign_key)
            self.load(to)
        except TableLoadError as e:
            raise StoreError(f"refusing to roll back to {to!r}: {e.problem}") from e
        with self._fs.publish_lock(self.lock_wait_s):
            before = self._latest_or_none()
            clock = now or datetime.now(timezone.utc)
            newest = newest_ordered([before, *self.version_ids()], _wall_clock(now))
            at = clock.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")
            record = RollbackRecord(to, before, newest, at)
            if sign_key is not None:
                record = record.signed(sign_key)
            # The record first: a controller that sees LATEST move back finds what allows it.
            self._fs.write_atomic(ROLLBACK_FILE, record.to_bytes())
            self._move_latest(to)
        return before

    def prune(self, keep: int, *, dry_run: bool = False) -> PruneReport:
        """Remove all but the `keep` newest versions (with their .sig and .meta). Never removed:
        the version LATEST names and the rollback record's target. Names that are not publish ids
        are left alone and listed. Runs under the publish lock, so LATEST cannot move meanwhile."""
        if type(keep) is not int or keep < 1:
            raise StoreError(f"keep={short(keep)} is not valid; expected an integer >= 1 (versions to keep)")
        with self._fs.publish_lock(self.lock_wait_s):
            protected: dict[str, str] = {}
            latest = self._latest_or_none()
            if latest is not None:
                protected[latest] = "LATEST"
            try:
                record = self.rollback_record()
            except StoreError:
                record = None
            if record is not None:
                protected.setdefault(record.to, "rollback record target")
            wall = _wall_clock(None)
            ids = self.version_ids()
            ordered = [v for v in ids if orders_versions(v, wall)]
            kept = ordered[-keep:]
            removed = [v for v in ordered[:-keep] if v not in protected]
            if not dry_run:
                for vid in removed:
                    # The table first: a version whose .sig went first would read as tampered.
                    for suffix in (".json", f".json{SIG_SUFFIX}", f".json{META_SUFFIX}"):
                        self._remove(f"{VERSIONS_DIR}/{vid}{suffix}")
        not_ordered = [v for v in ids if not orders_versions(v, wall)]
        return PruneReport(removed, kept, {v: why for v, why in protected.items() if v in ids}, not_ordered)

    def _remove(self, rel: str) -> None:
        # Both FS classes have every other operation; removal is only needed here.
        try:
            if isinstance(self._fs, FsspecFS):
                self._fs.fs.rm_file(self._fs.path(rel))
            else:
                os.remove(self._fs.path(rel))
        except FileNotFoundError:
            pass
        except OSError as e:
            raise StoreError(f"could not remove {rel} from {self.location}: {e}") from None

    def _latest_or_none(self) -> str | None:
        try:
            return self.latest_id()
        except PointerError:  # a bad pointer is replaced by the publish or the rollback
            return None

    def _write_new(self, written: list[str], rel: str, data: bytes) -> None:
        self._fs.write_new(rel, data)
        written.append(rel)

    def _move_latest(self, version_id: str, *, forward_only: bool = False) -> str:
        """Point LATEST at `version_id` by compare-and-swap on the pointer (what LATEST held is read
        after its tag, so a swap that succeeds replaced exactly what was read), trying again while
        other writers move it meanwhile. `forward_only` (publish): when LATEST already names a publish
        id at or after this one, this publish was superseded by a newer one and LATEST stays.
        Returns what LATEST names afterwards."""
        data = f"{version_id}\n".encode()
        for _ in range(CAS_ATTEMPTS):
            tag = self._fs.tag(LATEST)
            current = self._latest_or_none()
            if (forward_only and current is not None and current >= version_id
                    and orders_versions(current, _wall_clock(None))):
                return current
            if self._fs.compare_and_swap(LATEST, tag, data):
                return version_id
        raise StoreLockError(
            f"LATEST in {self.location} changed under each of {CAS_ATTEMPTS} tries to move it to {version_id}; "
            "are many publishers writing at once? The version is written: move LATEST with `lookupctl rollback`"
        )


def _is_id(name: str) -> bool:
    try:
        validate_id(name)
    except StoreError:
        return False
    return True


def _disorder_note(version_id: str) -> str:
    if publish_time(version_id) is None:
        return "not a publish id (ignored by publish)"
    return "stamped in the future (ignored by publish)"


def _choose_id(table: Table, clock: datetime, newest: str | None, existing: set[str],
               wall: datetime) -> tuple[str, str]:
    """(the id to publish under, why the table's own id was not kept or '')."""
    own = table.version_id
    if own in existing:
        why = f"{own} is already in the store"
    elif not orders_versions(own, wall):
        why = f"{short(own)} is not a publish id"
    elif newest is not None and own <= newest:
        why = f"the store holds a newer version, {newest}"
    else:
        return own, ""
    version_id = new_version_id(clock, table.sha256)
    if newest is not None and version_id <= newest:
        # Same microsecond or a clock step back: stay strictly after the newest id.
        version_id = successor(newest, table.sha256)
    return version_id, why
