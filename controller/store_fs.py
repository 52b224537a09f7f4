"""Where a table store's bytes live: a local or shared directory, or an object store via fsspec.

Every read is bounded: only regular files (a FIFO or a device would block or never end), at most
`max_bytes`, and within a timeout (a hung NFS mount or a stalled object-store GET must not stop the
reader for good). The `LATEST` pointer moves by compare-and-swap: `tag` names what the pointer
holds now, and `compare_and_swap` writes only while it still holds that. A local directory makes
that a real swap by serialising publishers with a lock; S3 does it on the server (`If-Match` on the
pointer's ETag, `If-None-Match: *` to create it), so publishers there need no lock at all.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import stat
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from controller.errors import NotAFileError, StoreLockError, StoreReadError, VersionExistsError
from controller.optional import require
from controller.table_file import atomic_write

T = TypeVar("T")
LOCK_NAME = ".publish.lock"
# Reads that timed out may still be blocked in their threads; past this many, refuse new reads at
# once instead of leaving one more thread behind every poll.
MAX_STUCK_READS = 4
_stuck = 0
_stuck_lock = threading.Lock()
# memory:// lives in this process only, so a process lock makes its compare-and-swap atomic.
_in_process_cas = threading.Lock()
# S3 answers a failed precondition with 412, a conditional write racing another with 409.
_CONFLICT_CODES = ("PreconditionFailed", "ConditionalRequestConflict")


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
            raise VersionExistsError(f"{rel} already exists in the store; version files are never overwritten")
        atomic_write(Path(self.path(rel)), data)

    def tag(self, rel: str) -> str | None:
        """What the file is now (inode, mtime, size), or None when absent. A FIFO or a directory
        has a tag too, so a publish can replace any bad LATEST."""
        def stat_tag() -> str | None:
            try:
                st = os.lstat(self.path(rel))
            except FileNotFoundError:
                return None
            return f"{st.st_ino}:{st.st_mtime_ns}:{st.st_size}:{st.st_mode}"

        return call_with_timeout(stat_tag, self.read_timeout_s, f"checking {rel}")

    def compare_and_swap(self, rel: str, expected: str | None, data: bytes) -> bool:
        """Replace the file (atomically, by rename) if its tag is still `expected`; False if it
        changed. Atomic among writers that hold `publish_lock`, as publish and rollback do."""
        if self.tag(rel) != expected:
            return False
        atomic_write(Path(self.path(rel)), data)
        return True

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
    rename (which object stores emulate with copy + delete).

    How `LATEST` is swapped depends on the backend (`cas`):
    - "etag" (s3://, through s3fs): conditional PUTs, checked by the server. No lock.
    - "process" (memory://): the objects live in this process; a process lock suffices. No lock.
    - "lock" (gs:// and the rest): no conditional overwrite through fsspec, so publishers take a
      lock object created with a conditional write, and the swap is only as safe as that lock
      (a publisher stalled past STALE_LOCK_S loses it).
    """

    # A lock object older than this is taken to be left by a dead publisher.
    STALE_LOCK_S = 60.0

    def __init__(self, root: str, read_timeout_s: float) -> None:
        fsspec = require("fsspec", "store")
        self.root = root.rstrip("/")
        # No listings cache: s3fs keeps every listing for the life of the process and answers reads
        # from it, so a version another process published after the listing was "not found".
        self.fs, _ = fsspec.core.url_to_fs(self.root, use_listings_cache=False)
        self.read_timeout_s = read_timeout_s
        protocols = self.fs.protocol if isinstance(self.fs.protocol, (tuple, list)) else (self.fs.protocol,)
        self.cas = "etag" if "s3" in protocols else "process" if "memory" in protocols else "lock"

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
        path = self.path(rel)
        exists = VersionExistsError(f"{rel} already exists in the store; version files are never overwritten")
        if self.cas != "etag":  # memory://: one process; other backends: under the lock object
            with _in_process_cas:
                if self.fs.exists(path):
                    raise exists
                self.fs.pipe_file(path, data)
            return
        try:  # If-None-Match: * on S3: two publishers that chose the same id cannot both write it
            self.fs.pipe_file(path, data, mode="create")
        except FileExistsError:
            raise exists from None
        except OSError as e:
            if _conflict(e):
                raise exists from None
            raise

    def tag(self, rel: str) -> str | None:
        """The object's ETag (S3), or a digest of its bytes (other backends); None when absent."""
        def get() -> str | None:
            path = self.path(rel)
            try:
                if self.cas == "etag":
                    return str(self.fs.info(path)["ETag"])
                return hashlib.sha256(bytes(self.fs.cat_file(path))).hexdigest()
            except (FileNotFoundError, KeyError):
                return None

        return call_with_timeout(get, self.read_timeout_s, f"checking {rel}")

    def compare_and_swap(self, rel: str, expected: str | None, data: bytes) -> bool:
        """Write the object only if its tag is still `expected` (None: only if it does not exist);
        False if another writer changed it first."""
        path = self.path(rel)
        if self.cas == "etag":
            condition = {"mode": "create"} if expected is None else {"IfMatch": expected}
            try:
                self.fs.pipe_file(path, data, **condition)
            except (FileExistsError, FileNotFoundError):  # created meanwhile / deleted meanwhile
                return False
            except OSError as e:
                if _conflict(e):
                    return False
                raise
            return True
        with _in_process_cas:  # "lock" backends: the publish lock keeps other processes out
            if self.tag(rel) != expected:
                return False
            self.fs.pipe_file(path, data)
            return True

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
        """Nothing where `compare_and_swap` is checked by the store itself (S3, memory://): a lock
        object there is unsafe (one that outlives STALE_LOCK_S is broken while its holder still
        writes). Elsewhere a lock object created with a conditional write ("xb": If-None-Match in
        gcsfs); backends without conditional writes raise here rather than publish unserialised."""
        if self.cas != "lock":
            yield
            return
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


def _conflict(e: OSError) -> bool:
    """Whether s3fs's error is S3's answer to a failed condition (it keeps botocore's error as the
    cause): 412 PreconditionFailed, or 409 when two conditional writes raced."""
    response = getattr(e.__cause__, "response", None)
    if not isinstance(response, dict):
        return False
    error = response.get("Error") or {}
    status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
    return error.get("Code") in _CONFLICT_CODES or status in (409, 412)
