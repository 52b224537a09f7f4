"""The table store on a real S3 endpoint (moto's server over HTTP, through s3fs): publish, rollback,
signing, a stalled store, and concurrent publishers that lose nothing by compare-and-swap on LATEST."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from controller import store_fs
from controller.errors import StoreReadError, TableLoadError
from controller.signing import SIG_SUFFIX
from controller.store import LATEST, TableStore
from controller.store_fs import FsspecFS
from serving.lookup.table_watcher import TableWatcher
from tests.support.publisher import PUBLISHER, run_publishers
from tests.support.s3 import S3Server
from tests.support.tables import synthetic_table

PUBLISHERS, ROUNDS = 4, 10
KEY = b"k" * 32


def test_publish_load_and_list(s3_server: S3Server) -> None:
    url = s3_server.new_bucket("publish")
    store = TableStore(url)
    assert isinstance(store._fs, FsspecFS) and store._fs.cas == "etag"
    first = store.publish(synthetic_table())
    second = store.publish(synthetic_table(latency_scale=1.3))
    assert second.version_id > first.version_id
    # A fresh store object (another process, in effect) sees what was published.
    reader = TableStore(url)
    assert reader.latest_id() == second.version_id
    assert reader.load().sha256 == second.sha256
    assert reader.version_ids() == [first.version_id, second.version_id]
    assert [v.is_latest for v in reader.versions()] == [False, True]
    objects = store._fs.fs.find(url)
    # No lock object on S3: publishes are ordered by the conditional writes alone.
    assert not [o for o in objects if o.endswith(".publish.lock")]
    assert f"{url.removeprefix('s3://')}/{LATEST}" in objects


def test_a_reader_sees_what_another_process_published(s3_server: S3Server, tmp_path: Path) -> None:
    """A controller lists the store, another process publishes, the controller loads the new
    version. s3fs caches listings per process; a read answered from that cache said "not found"."""
    url = s3_server.new_bucket("reader")
    reader = TableStore(url)
    reader.publish(synthetic_table())
    assert len(reader.version_ids()) == 1  # a listing this process has seen
    table_file = tmp_path / "t.json"
    synthetic_table(latency_scale=1.3).save(table_file)
    out = subprocess.run(
        [sys.executable, "-c", PUBLISHER, url, str(table_file), "1"],
        capture_output=True, text=True, timeout=120, check=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    ).stdout
    published = json.loads(out)["id"]
    assert reader.latest_id() == published
    assert reader.load().version_id == published
    assert reader.version_ids()[-1] == published


def test_pointer_compare_and_swap_is_checked_by_the_server(s3_server: S3Server) -> None:
    """The conditional PUTs the store relies on, answered by the endpoint itself."""
    fs = FsspecFS(s3_server.new_bucket("cas"), read_timeout_s=10)
    assert fs.tag("P") is None
    assert fs.compare_and_swap("P", None, b"a")  # If-None-Match: * creates it
    assert not fs.compare_and_swap("P", None, b"b")  # ... once
    tag_a = fs.tag("P")
    assert tag_a is not None
    assert fs.compare_and_swap("P", tag_a, b"c")  # If-Match on the ETag read
    assert not fs.compare_and_swap("P", tag_a, b"d")  # a stale ETag: 412, nothing written
    assert fs.read("P", 16) == b"c"


def test_a_superseded_publish_leaves_latest_on_the_newer_one(s3_server: S3Server) -> None:
    store = TableStore(s3_server.new_bucket("superseded"))
    older = store.publish(synthetic_table())
    newer = store.publish(synthetic_table(latency_scale=1.3))
    # A publisher that wrote `older` and reached the swap after `newer` had moved LATEST: the
    # pointer only moves forward, so its publish ends superseded and LATEST stays.
    assert store._move_latest(older.version_id, forward_only=True) == newer.version_id
    assert store.latest_id() == newer.version_id


def test_rollback(s3_server: S3Server) -> None:
    store = TableStore(s3_server.new_bucket("rollback"))
    first = store.publish(synthetic_table())
    second = store.publish(synthetic_table(latency_scale=1.3))
    assert store.rollback(first.version_id) == second.version_id
    assert store.latest_id() == first.version_id
    record = store.rollback_record()
    assert record is not None and record.to == first.version_id
    # A watcher that served `second` follows the recorded rollback.
    watcher = TableWatcher(TableStore(store.location), clock=lambda: 0.0)
    store.rollback(second.version_id)
    assert watcher.check()[0] == "accepted" and watcher.table is not None
    store.rollback(first.version_id)
    outcome, table = watcher.check()
    assert outcome == "accepted" and table is not None and table.version_id == first.version_id


def test_signed_versions(s3_server: S3Server) -> None:
    url = s3_server.new_bucket("signed")
    publisher, verifier = TableStore(url), TableStore(url, verify_key=KEY)
    signed = publisher.publish(synthetic_table(), sign_key=KEY)
    assert verifier.load().version_id == signed.version_id
    unsigned = publisher.publish(synthetic_table(latency_scale=1.3))
    with pytest.raises(TableLoadError, match="not signed"):
        verifier.load(unsigned.version_id)
    # Tampering with a signed version in the bucket is caught by the signature.
    fs = publisher._fs
    assert isinstance(fs, FsspecFS)
    path = fs.path("versions", f"{signed.version_id}.json")
    fs.fs.pipe_file(path, fs.fs.cat_file(path).replace(b'"source"', b'"source" ', 1))
    assert fs.fs.exists(path + SIG_SUFFIX)
    with pytest.raises(TableLoadError, match="signature does not match"):
        verifier.load(signed.version_id)


def test_concurrent_publishers_lose_nothing(s3_server: S3Server, tmp_path: Path) -> None:
    """Four processes publish at once, with no lock. A publish is lost when it reported success and
    yet is neither LATEST nor superseded by a newer successful publish, or its version object is
    missing. So: every reported version exists and loads, each publish's `after` is its own id or a
    newer reported one, and LATEST ends on the newest of all. The bucket keeps every write of
    LATEST, which shows more: LATEST only ever moved forward (no older id overwrote a newer one
    meanwhile, which a watcher would refuse as a replay), and it named every publish that reported
    its own id as LATEST."""
    url = s3_server.new_bucket("concurrent", versioned=True)
    table_file = tmp_path / "t.json"
    synthetic_table().save(table_file)
    reports = run_publishers(url, str(table_file), PUBLISHERS, ROUNDS)
    store = TableStore(url)
    ids = {r["id"] for r in reports}
    assert len(reports) == PUBLISHERS * ROUNDS == len(ids)
    # Only the published versions are in the store: an id two publishers chose at once was
    # created by one of them, and the other chose again without leaving files behind.
    assert store.version_ids() == sorted(ids)
    for vid in ids:
        assert store.load(vid).version_id == vid
    superseded = [r for r in reports if r["after"] != r["id"]]
    assert all(r["after"] in ids and r["after"] > r["id"] for r in superseded), superseded
    assert store.latest_id() == max(ids)
    history = s3_server.pointer_history(url)
    assert history == sorted(set(history)), history
    assert {r["id"] for r in reports if r["after"] == r["id"]} == set(history)
    print(f"concurrent publishes on S3: {len(reports)} by {PUBLISHERS} processes, 0 lost, "
          f"{len(superseded)} superseded by a newer one before their swap")


def test_a_stalled_endpoint_is_a_read_timeout_then_recovers(s3_server: S3Server) -> None:
    """moto's server answers one request at a time: a client that sends half a request stalls it,
    as a hung object store would. Reads time out (counted, visible), then work again."""
    url = s3_server.new_bucket("stalled")
    published = TableStore(url).publish(synthetic_table())
    store = TableStore(url, read_timeout_s=0.5)
    watcher = TableWatcher(store, clock=lambda: 0.0)
    host, port = s3_server.endpoint.removeprefix("http://").split(":")
    staller = socket.create_connection((host, int(port)))
    try:
        staller.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")  # headers never end
        time.sleep(0.2)
        started = time.monotonic()
        with pytest.raises(StoreReadError, match="did not finish within"):
            store.latest_id()
        assert time.monotonic() - started < 2.0
        assert watcher.check()[0] == "unavailable"
        assert watcher.status()["read_failures"] == 1
    finally:
        staller.close()
    deadline = time.monotonic() + 30
    while store_fs._stuck and time.monotonic() < deadline:  # the timed-out reads finish now
        time.sleep(0.1)
    assert store_fs._stuck == 0
    outcome, table = watcher.check()
    assert outcome == "accepted" and table is not None and table.version_id == published.version_id
