"""Optional table signing: an HMAC-SHA256 of a version file's bytes, kept next to it as `<id>.json.sig`.

A table's sha256 is a checksum (anyone who can write the file can recompute it); the HMAC needs the
key, so a controller given `verify_key_file` serves only versions published by a key holder.
"""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

from controller.errors import StoreError

MIN_KEY_BYTES = 16
SIG_SUFFIX = ".sig"


def read_key_file(path: str | Path) -> bytes:
    """The key is the file's content without surrounding whitespace; errors never quote it."""
    p = Path(path).expanduser()
    try:
        key = p.read_bytes().strip()
    except OSError as e:
        raise StoreError(f"signing key file {p}: cannot read ({e.strerror or e})") from None
    if len(key) < MIN_KEY_BYTES:
        raise StoreError(
            f"signing key file {p} holds {len(key)} bytes; use at least {MIN_KEY_BYTES} random bytes, "
            "e.g. `openssl rand -hex 32 > FILE`"
        )
    return key


def sign(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha256).hexdigest().encode()


def verify(key: bytes, data: bytes, signature: bytes) -> bool:
    return hmac.compare_digest(sign(key, data), signature.strip())
