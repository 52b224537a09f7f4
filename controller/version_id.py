"""Version ids: what a name in `versions/` may be, and which names are publish ids that order versions."""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import datetime, timedelta, timezone

from controller.errors import StoreError

# A version id is a file name in versions/: no path separators, no "..", no control bytes.
_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
# A publish id: a fixed-width UTC timestamp, then 8 characters of a digest.
_PUBLISH_RE = re.compile(r"(\d{8}T\d{12}Z)-[A-Za-z0-9]{8}")
_STAMP = "%Y%m%dT%H%M%S%fZ"
# Clocks of publishers may disagree a little; a stamp further ahead than this is a planted name.
MAX_CLOCK_AHEAD = timedelta(days=1)


def short(value: object, limit: int = 64) -> str:
    """repr of a value cut to `limit` characters: errors quote what was wrong, not all of it."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + f"...(+{len(text) - limit} chars)"


def new_version_id(now: datetime, sha256: str) -> str:
    """Fixed-width UTC timestamp first, so that plain string order is publish order."""
    return f"{now.astimezone(timezone.utc):{_STAMP}}-{sha256[:8]}"


def is_version_id(version_id: str) -> bool:
    return bool(_ID_RE.fullmatch(version_id)) and ".." not in version_id


def validate_id(version_id: str) -> str:
    if not is_version_id(version_id):
        raise StoreError(
            f"version id {short(version_id)} is not valid; expected a name like 20250101T120000000000Z-1a2b3c4d "
            "(letters, digits, '.', '_', '-'; at most 128)"
        )
    return version_id


def publish_time(version_id: str) -> datetime | None:
    """The UTC time a publish id starts with; None for any other name (a hand-made or planted one)."""
    m = _PUBLISH_RE.fullmatch(version_id)
    if m is None:
        return None
    try:
        return datetime.strptime(m.group(1), _STAMP).replace(tzinfo=timezone.utc)
    except ValueError:  # 99999999T... has the shape but is no date
        return None


def orders_versions(version_id: str, now: datetime) -> bool:
    """True for the names that take part in version order: publish ids not far in the future. Any
    other file in versions/ is listed, never loaded as newest, and never blocks a publish."""
    when = publish_time(version_id)
    return when is not None and when <= now + MAX_CLOCK_AHEAD


def newest_ordered(ids: Iterable[str | None], now: datetime) -> str | None:
    return max((i for i in ids if i is not None and orders_versions(i, now)), default=None)


def successor(version_id: str, sha256: str) -> str:
    """The first publish id after `version_id` (a publish id)."""
    when = publish_time(version_id)
    assert when is not None, "successor is taken of publish ids only"
    return new_version_id(when + timedelta(microseconds=1), sha256)
