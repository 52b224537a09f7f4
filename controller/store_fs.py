"""Where a table store's bytes live: a local or shared directory, or an object store via fsspec.

Every read is bounded: only regular files (a FIFO or a device would block or never end), at most
`max_bytes`, and within a timeout (a hung NFS mount or a stalled object-store GET must not stop the
reader for good). Publishing is serialised by a lock, so that version ids are taken in order.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from controller.errors import NotAFileError, StoreError, StoreLockError, StoreReadError
from controller.optional import require
from controller.table_file import atomic_write

T = TypeVar("T")
LOCK_NAME = ".publish.lock"
# Reads that timed out may still be blocked in their threads; past this many, refuse new reads at
# once instead of leaving one more thread behind every poll.
MAX_STUCK_READS = 4
_stuck = 0
_stuck_lock = threading.Lock()


def call_with_timeout(fn: Callable[[], T], timeout_s: float, what: str) -> T:
    """Run a blocking read in a daemon thread; StoreReadError if it has not finished in time. The
    thread cannot be killed, so it is counted until it ends (see MAX_STUCK_READS)."""
    global _stuck
    with _stuck_lock:
        if _stuck >= MAX_STUCK_READS:
            raise StoreReadError(f"{what}: {_stuck} earlier store reads are still blocked; is the store reachable?")
    box: dict[str, Any] = {}
    done = threading.Event()

    def run() -> None:
        global _stuck
        try:
            box["value"] = fn()
        except BaseException as e:  # handed to the caller below
            box["error"] = e
        finally:
            done.set()
            if box.get("stuck"):
                with _stuck_lock:
                    _stuck -= 1

    threading.Thread(target=run, name="store-read", daemon=True).start()
    if not done.wait(timeout_s):
        with _stuck_lock:
            if not done.is_set():
                box["stuck"] = True
                _stuck += 1
        if not done.is_set():
            raise StoreReadError(f"{what} did not finish within {timeout_s:g} s (hung mount or slow store?)")
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]


def _read_regular(path: str, max_bytes: int) -> bytes:
    # O_NONBLOCK: opening a FIFO for reading would otherwise block until a writer appears.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotAFileError(f"{path} is not a regular file; the store only reads regular files")
        if st.st_size > max_bytes:
            raise NotAFileError(f"{path} holds {st.st_size} bytes, more than the limit of {max_bytes}")
        os.set_blocking(fd, True)
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(max_bytes + 1)
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise NotAFileError(f"{path} grew past the limit of {max_bytes} bytes while being read")
    return data


class LocalFS:
    """A local or shared-filesystem directory. Writes are temp file + fsync + rename, so a reader
    sees the old content or the new one, never a mix."""

    def __init__(self, root: str, read_timeout_s: float) -> None:
        self.root = os.path.abspath(os.path.expanduser(root))
        self.read_timeout_s = read_timeout_s

    def path(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    def read(self, rel: str, max_bytes: int) -> bytes:
        path = self.path(rel)
        return call_with_timeout(lambda: _read_regular(path, max_bytes), self.read_timeout_s, f"reading {rel}")

    def write_atomic(self, rel: str, data: bytes) -> None:
        atomic_write(Path(self.path(rel)), data)

    def write_new(self, rel: str, data: bytes) -> None:
        """Write a file that must not exist yet (a version file is never overwritten)."""
        if os.path.lexists(self.path(rel)):
            raise StoreError(f"{rel} already exists in the store; version files are never overwritten")
        atomic_write(Path(self.path(rel)), data)

    def list(self, rel: str) -> list[str]:
        def ls() -> list[str]:
            try:
                return sorted(os.listdir(self.path(rel)))
            except FileNotFoundError:
                return []

        return call_with_timeout(ls, self.read_timeout_s, f"listing {rel}")

    @contextlib.contextmanager
    def publish_lock(self, wait_s: float) -> Iterator[None]:
        """An exclusive flock on STORE/.publish.lock (works across processes, and across hosts on
        NFSv4). The kernel drops it if the publisher dies, so it never goes stale."""
        import fcntl

        os.makedirs(self.root, exist_ok=True)
        fd = os.open(self.path(LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            deadline = time.monotonic() + wait_s
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as e:
                    if e.errno not in (errno.EAGAIN, errno.EACCES) or time.monotonic() > deadline:
                        raise StoreLockError(
                            f"could not take the publish lock {self.path(LOCK_NAME)} within {wait_s:g} s: {e}"
                        ) from e
                    time.sleep(0.01)
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


class FsspecFS:
    """Object storage through fsspec. One PUT of an object is atomic there, so `LATEST` needs no
    rename (which object stores emulate with copy + delete)."""

    # A lock object older than this is taken to be left by a dead publisher.
    STALE_LOCK_S = 60.0

    def __init__(self, root: str, read_timeout_s: float) -> None:
        fsspec = require("fsspec", "store")
        self.root = root.rstrip("/")
        self.fs, _ = fsspec.core.url_to_fs(self.root)
        self.read_timeout_s = read_timeout_s

    def path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def read(self, rel: str, max_bytes: int) -> bytes:
        def get() -> bytes:
            path = self.path(rel)
            try:
                info = self.fs.info(path)
            except KeyError as e:  # some in-memory backends raise KeyError for a missing object
                raise FileNotFoundError(path) from e
            if info.get("type") != "file":
                raise NotAFileError(f"{path} is not a file; the store only reads plain objects")
            if int(info.get("size") or 0) > max_bytes:
                raise NotAFileError(f"{path} holds {info.get('size')} bytes, more than the limit of {max_bytes}")
            return bytes(self.fs.cat_file(path))

        return call_with_timeout(get, self.read_timeout_s, f"reading {rel}")

    def write_atomic(self, rel: str, data: bytes) -> None:
        self.fs.pipe_file(self.path(rel), data)

    def write_new(self, rel: str, data: bytes) -> None:
        if self.fs.exists(self.path(rel)):
            raise StoreError(f"{rel} already exists in the store; version files are never overwritten")
        self.fs.pipe_file(self.path(rel), data)

    def list(self, rel: str) -> list[str]:
        def ls() -> list[str]:
            try:
                entries = self.fs.ls(self.path(rel), detail=False)
            except FileNotFoundError:
                return []
            return sorted(str(e).rstrip("/").rsplit("/", 1)[-1] for e in entries)

        return call_with_timeout(ls, self.read_timeout_s, f"listing {rel}")

    @contextlib.contextmanager
    def publish_lock(self, wait_s: float) -> Iterator[None]:
        """A lock object created with a conditional write ("xb": If-None-Match on S3 and GCS in
        s3fs/gcsfs, exclusive create in memory://). Backends without conditional writes raise
        here rather than publish unserialised."""
        path = self.path(LOCK_NAME)
        deadline = time.monotonic() + wait_s
        while True:
            try:
                with self.fs.open(path, "xb") as f:
                    f.write(f"{os.getpid()} {time.time()}".encode())
                break
            except FileExistsError:
                self._break_stale(path)
                if time.monotonic() > deadline:
                    raise StoreLockError(f"could not take the publish lock {path} within {wait_s:g} s") from None
                time.sleep(0.05)
            except (NotImplementedError, ValueError) as e:
                raise StoreLockError(
                    f"{self.root}: this object store gives no conditional writes, so publishes cannot be "
                    "serialised; publish from one place only, or use a store that supports them"
                ) from e
        try:
            yield
        finally:
            with contextlib.suppress(FileNotFoundError):
                self.fs.rm_file(path)

    def _break_stale(self, path: str) -> None:
        with contextlib.suppress(Exception):
            stamp = float(self.fs.cat_file(path).split()[1])
            if time.time() - stamp > self.STALE_LOCK_S:
                self.fs.rm_file(path)
