"""A real S3 endpoint for the store tests: moto's server (`moto[server]`) in its own process on
127.0.0.1, reached over HTTP through s3fs and botocore, as a deployment reaches S3."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

from serving.local import free_port

# moto's server app on werkzeug, one request at a time. moto checks a PUT's precondition and then
# stores the object in two steps; S3 makes the two one step per key. Served one at a time, moto's
# check and write cannot interleave with another request either, so the concurrent-publish test
# measures the store's compare-and-swap, not moto's own race. Publishers still interleave between
# requests (read the pointer's ETag, then the conditional PUT), which is the race that matters.
MOTO_SERVER = """
import sys
from werkzeug.serving import run_simple
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
run_simple("127.0.0.1", int(sys.argv[1]), DomainDispatcherApplication(create_backend_app),
           threaded=False, request_handler=MotoRequestHandler)
"""


@dataclass(frozen=True)
class S3Server:
    endpoint: str

    @property
    def env(self) -> dict[str, str]:
        """What botocore (under s3fs) reads: the endpoint and fake credentials, and no user files."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        }

    def new_bucket(self, name: str, *, versioned: bool = False) -> str:
        """Create a bucket; returns its s3:// URL (with a prefix, as a deployment would use). With
        `versioned`, S3 keeps every write of every object (`pointer_history` reads LATEST's)."""
        fs = self._fs()
        fs.mkdir(name)
        if versioned:
            fs.call_s3("put_bucket_versioning", Bucket=name, VersioningConfiguration={"Status": "Enabled"})
        return f"s3://{name}/lookup_store"

    def pointer_history(self, url: str, key: str = "LATEST") -> list[str]:
        """Every value the object `key` under a versioned bucket's URL held, oldest first."""
        bucket, prefix = url.removeprefix("s3://").split("/", 1)
        fs, name = self._fs(), f"{prefix}/{key}"
        listed = fs.call_s3("list_object_versions", Bucket=bucket, Prefix=name)
        versions = [v for v in listed.get("Versions", []) if v["Key"] == name]
        assert not listed.get("IsTruncated"), "more versions than one listing holds"
        # Listed newest first; LastModified (whole seconds) cannot order writes in one second.
        path = f"{bucket}/{name}"
        return [fs.cat_file(path, version_id=v["VersionId"]).decode().strip() for v in reversed(versions)]

    def _fs(self):  # type: ignore[no-untyped-def]
        import s3fs

        return s3fs.S3FileSystem(endpoint_url=self.endpoint, key="testing", secret="testing", version_aware=True,
                                skip_instance_cache=True)


@contextlib.contextmanager
def moto_server(start_timeout_s: float = 60.0) -> Iterator[S3Server]:
    """Start the server on a free port, wait until it answers, and always stop it."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-c", MOTO_SERVER, str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + start_timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"moto server exited with {proc.returncode} before answering on port {port}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"moto server not answering on port {port} after {start_timeout_s:g} s")
            time.sleep(0.1)
        yield S3Server(f"http://127.0.0.1:{port}")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
