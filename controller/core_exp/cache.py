"""Per-file cache of parsed columns, keyed by path and validated by (size, mtime) then content hash."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

# Bump when the cached column layout or meta meaning changes: older entries are then ignored.
CACHE_FORMAT_VERSION = 2  # 2: T_total is not rebuilt from decode alone (a failed timing stays 0)
INDEX_NAME = "index.json"
ENV_CACHE_DIR = "LOOKUPCTL_CACHE_DIR"


def default_cache_dir() -> Path:
    """`$LOOKUPCTL_CACHE_DIR`, else `$XDG_CACHE_HOME/lookupctl`, else `~/.cache/lookupctl`."""
    explicit = os.environ.get(ENV_CACHE_DIR)
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "lookupctl"


def content_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_hash(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class FileStat:
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: Path) -> FileStat:
        st = path.stat()
        return cls(st.st_size, st.st_mtime_ns)


@dataclass(frozen=True)
class CacheEntry:
    """What one parsed source file produced: a structured row array plus JSON-able meta."""

    rows: npt.NDArray[Any]
    meta: dict[str, Any]


class FileCache:
    """One `.npy` per source file (named by a hash of its absolute path) and one small index JSON.

    Every failure to read the cache means "not cached": a corrupt entry is re-parsed, never fatal.
    Call `save()` once after a load to write the index.
    """

    def __init__(self, cache_dir: str | os.PathLike[str], dtype: np.dtype[Any]) -> None:
        self.dir = Path(cache_dir)
        self.dtype = dtype
        self._index: dict[str, dict[str, Any]] = self._read_index()
        self._dirty = False

    def _read_index(self) -> dict[str, dict[str, Any]]:
        try:
            raw = json.loads((self.dir / INDEX_NAME).read_text())
        except (OSError, ValueError):
            return {}
        if not isinstance(raw, dict) or raw.get("version") != CACHE_FORMAT_VERSION:
            return {}
        if raw.get("dtype") != self.dtype.descr.__repr__():
            return {}
        files = raw.get("files")
        return files if isinstance(files, dict) else {}

    @staticmethod
    def entry_name(path: Path) -> str:
        return hashlib.sha256(str(path).encode()).hexdigest()[:32] + ".npy"

    def lookup(self, path: Path, stat: FileStat) -> CacheEntry | None:
        """The cached entry if the file is unchanged: same (size, mtime), or same content hash."""
        key = str(path)
        rec = self._index.get(key)
        if not isinstance(rec, dict):
            return None
        try:
            if rec["size"] != stat.size:
                return None
            if rec["mtime_ns"] != stat.mtime_ns:
                # Touched: reuse only when the bytes are the same, and remember the new mtime.
                if file_hash(path) != rec["hash"]:
                    return None
                rec["mtime_ns"] = stat.mtime_ns
                self._dirty = True
            rows = np.load(self.dir / rec["entry"], allow_pickle=False)
            if rows.dtype != self.dtype or rows.ndim != 1 or len(rows) != rec["rows"]:
                return None
            meta = rec["meta"]
            if not isinstance(meta, dict):
                return None
            return CacheEntry(rows, meta)
        except (OSError, ValueError, KeyError, TypeError, EOFError):
            return None

    def store(self, path: Path, stat: FileStat, digest: str, entry: CacheEntry) -> None:
        name = self.entry_name(path)
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.dir, suffix=".tmp")
            with os.fdopen(fd, "wb") as f:
                np.save(f, entry.rows, allow_pickle=False)
            os.replace(tmp, self.dir / name)
        except OSError:
            return  # an unwritable cache only costs speed
        self._index[str(path)] = {
            "size": stat.size,
            "mtime_ns": stat.mtime_ns,
            "hash": digest,
            "entry": name,
            "rows": len(entry.rows),
            "meta": entry.meta,
        }
        self._dirty = True

    def save(self) -> None:
        if not self._dirty:
            return
        # Re-read so that entries written meanwhile by another process survive where we have none.
        merged = self._read_index()
        merged.update(self._index)
        payload = {"version": CACHE_FORMAT_VERSION, "dtype": self.dtype.descr.__repr__(), "files": merged}
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.dir, suffix=".tmp")
            with os.fdopen(fd, "w") as f:
                json.dump(payload, f)
            os.replace(tmp, self.dir / INDEX_NAME)
        except OSError:
            return
        self._dirty = False
