"""Optional API keys for the router's HTTP routes (`auth.api_keys_file`; docs/security.md)."""

from __future__ import annotations

import hmac
from pathlib import Path

from serving.errors import ServingConfigError

HEADER = "Authorization"
OPEN_PATHS = frozenset({"/healthz"})  # probes carry no key; exact paths under the app's route prefix
SCHEME = "bearer"  # auth schemes are case-insensitive (RFC 7235 section 2.1)


class ActiveKeys:
    """The keys of the Router replica in this process (None: auth off). A class attribute in an
    importable module, so that the replica's __init__ and the app's middleware see the same one
    (Serve may pickle the ingress class and its module globals by value)."""

    keys: ApiKeys | None = None


class ApiKeys:
    def __init__(self, keys: list[bytes]) -> None:
        self.keys = keys

    @classmethod
    def from_file(cls, path: str) -> ApiKeys:
        """One key per line; blank lines and lines starting with # are skipped. Errors name the
        file, never a key."""
        p = Path(path).expanduser()
        try:
            lines = p.read_bytes().splitlines()
        except OSError as e:
            raise ServingConfigError(f"auth.api_keys_file={str(p)!r}: cannot read ({e.strerror or e})") from None
        keys = [k.strip() for k in lines if k.strip() and not k.strip().startswith(b"#")]
        if not keys or any(len(k) < 16 for k in keys):
            raise ServingConfigError(
                f"auth.api_keys_file={str(p)!r} must hold keys of at least 16 characters, one per line "
                "(e.g. `openssl rand -hex 32`)"
            )
        return cls(keys)

    def allows(self, header_value: str | None) -> bool:
        scheme, _, token = (header_value or "").strip().partition(" ")
        if scheme.lower() != SCHEME or not token.strip():
            return False
        given = token.strip().encode("latin-1", "replace")
        # compare_digest against every key, no early exit: the time taken says nothing about keys.
        return sum(hmac.compare_digest(given, k) for k in self.keys) > 0

    @staticmethod
    def is_open(path: str, root_path: str = "") -> bool:
        """Whether `path` is a route that needs no key. `root_path` is the app's route prefix
        (ASGI scope), which Serve keeps in `path` too: only `<prefix>/healthz` itself is open, not
        every path that ends in it (`/v1/stats/healthz` or `/x/healthz` must carry a key)."""
        if root_path and path.startswith(root_path):
            path = path[len(root_path) :]
        return path in OPEN_PATHS
