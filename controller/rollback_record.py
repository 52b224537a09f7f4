"""The rollback record: the one thing that lets `LATEST` move back to an older version.

Versions move forward: `LATEST` names the newest version, and a controller that verifies signatures
refuses an older one (a replayed `echo OLD_ID > LATEST`). `lookupctl rollback` writes this record,
signed with the store's key, before it moves `LATEST`: "serve `to`; `newest` was the newest version
when I decided". It authorizes `to` only while no newer version than `newest` exists, so a record
kept from an earlier rollback cannot be replayed after a later publish.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from controller.errors import StoreError
from controller.signing import sign, verify
from controller.version_id import is_version_id, short

ROLLBACK_FILE = "ROLLBACK.json"
MAX_RECORD_BYTES = 4096


@dataclass(frozen=True)
class RollbackRecord:
    to: str
    moved_from: str | None  # what LATEST named (None: nothing valid, e.g. a bad pointer being repaired)
    newest: str | None  # the newest version in the store when the rollback was made
    at: str  # ISO time, for people reading it
    signature: str | None = None  # hex HMAC of the other fields; None when written without a key

    def _body(self) -> bytes:
        fields = {k: v for k, v in asdict(self).items() if k != "signature"}
        return json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()

    def signed(self, key: bytes) -> RollbackRecord:
        return RollbackRecord(self.to, self.moved_from, self.newest, self.at, sign(key, self._body()).decode())

    def signed_by(self, key: bytes) -> bool:
        return self.signature is not None and verify(key, self._body(), self.signature.encode())

    def authorizes(self, target: str, newest: str | None) -> bool:
        """True when this record moves LATEST to `target` while `newest` is the newest valid version
        (a version published after the rollback is newer than the record's `newest`)."""
        if self.to != target:
            return False
        return newest is None or newest <= target or (self.newest is not None and newest <= self.newest)

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), indent=1).encode() + b"\n"

    @classmethod
    def from_bytes(cls, data: bytes) -> RollbackRecord:
        """StoreError naming the problem for anything but a well-formed record."""
        try:
            raw = json.loads(data)
        except (ValueError, RecursionError) as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
            raise StoreError(
                f"{ROLLBACK_FILE} is not JSON ({type(e).__name__}); rewrite it with `lookupctl rollback`"
            ) from None
        fields = ("to", "moved_from", "newest", "at", "signature")
        if not isinstance(raw, dict) or set(raw) != set(fields):
            raise StoreError(f"{ROLLBACK_FILE} holds {short(raw)}; expected an object with keys {', '.join(fields)}")
        if not (isinstance(raw["to"], str) and is_version_id(raw["to"])):
            raise StoreError(f"{ROLLBACK_FILE} 'to'={short(raw['to'])} is not a version id")
        for key in ("moved_from", "newest", "signature", "at"):
            if raw[key] is not None and not (isinstance(raw[key], str) and len(raw[key]) <= 256):
                raise StoreError(f"{ROLLBACK_FILE} {key!r}={short(raw[key])} is not valid; expected a string or null")
        return cls(raw["to"], raw["moved_from"], raw["newest"], raw["at"] or "", raw["signature"])
