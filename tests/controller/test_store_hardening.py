"""The table store under hostile conditions: concurrent publishers, blocking reads, odd files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from controller.errors import PointerError, StoreReadError, TableLoadError
from controller.store import LATEST, TableStore
from controller.store_fs import call_with_timeout
from lookupctl import main as lookupctl
from serving.lookup.table_watcher import TableWatcher
from tests.support.publisher import run_publishers
from tests.support.tables import synthetic_table

PUBLISHERS, ROUNDS = 4, 10


def test_concurrent_publishes_lose_nothing(tmp_path: Path) -> None:
    store_dir, table_file = tmp_path / "store", tmp_path / "t.json"
    synthetic_table().save(table_file)
    reports = run_publishers(str(store_dir), str(table_file), PUBLISHERS, ROUNDS)
    store = TableStore(str(store_dir))
    ids = store.version_ids()
    assert len(reports) == PUBLISHERS * ROUNDS == len(ids) == len({r["id"] for r in reports})
    # Each publish reports that its own version became LATEST (ids are taken inside the lock), and
    # after all of them LATEST names the newest version: 0 lost updates.
    assert all(r["after"] == r["id"] for r in reports)
    assert store.latest_id() == ids[-1]
    print(f"concurrent publishes: {len(reports)} by {PUBLISHERS} processes, 0 lost")


def test_blocking_read_times_out_and_is_counted(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    # A plain blocking open of a FIFO stands for a hung NFS read.
    with pytest.raises(StoreReadError, match="did not finish within"):
        call_with_timeout(lambda: fifo.read_bytes(), 0.2, "reading fifo")
    with open(fifo, "wb") as w:  # lets the stuck thread end
        w.write(b"x")


def test_hung_object_store_read_is_a_counted_visible_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    store = TableStore("memory://hung-store", read_timeout_s=0.2)
    store.publish(synthetic_table())
    watcher = TableWatcher(store, clock=lambda: 0.0)
    release = threading.Event()
    real = store._fs.fs.cat_file
    monkeypatch.setattr(store._fs.fs, "cat_file", lambda *a, **k: (release.wait(5), real(*a, **k))[1])
    try:
        assert watcher.check()[0] == "unavailable"
        status = watcher.status()
        assert status["read_failures"] == 1 and "did not finish" in status["last_error"]
    finally:
        release.set()
    monkeypatch.undo()
    assert watcher.check()[0] == "accepted"


@pytest.mark.parametrize("pointer", [b"../../../etc/passwd", b"a\x00b", b"\xff\xfe\x00", b"x" * 4096, b"a/b"])
def test_bad_latest_raises_a_pointer_error_naming_a_short_prefix(tmp_path: Path, pointer: bytes) -> None:
    store = TableStore(str(tmp_path))
    store.publish(synthetic_table())
    (tmp_path / LATEST).write_bytes(pointer)
    with pytest.raises(PointerError) as info:
        store.latest_id()
    assert len(str(info.value)) < 400


def test_versions_lists_a_directory_and_a_fifo_as_invalid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = TableStore(str(tmp_path))
    good = store.publish(synthetic_table())
    (tmp_path / "versions" / "20990101T000000000000Z-dir00000.json").mkdir()
    os.mkfifo(tmp_path / "versions" / "20990101T000000000001Z-fifo0000.json")
    assert lookupctl(["versions", "--store", str(tmp_path), "--check"]) == 0  # --check parses each
    out = capsys.readouterr().out
    assert good.version_id in out and out.count("INVALID") == 2


def test_publish_reports_what_became_latest(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    table_file = tmp_path / "t.json"
    synthetic_table().save(table_file)
    assert lookupctl(["publish", str(table_file), "--store", str(tmp_path / "s"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["latest_after"] == report["version_id"] and report["latest_before"] is None


@pytest.mark.parametrize(("field", "value"), [("accuracy", 1e300), ("accuracy", -0.1), ("latency_ms", 0.0)])
def test_resigned_table_with_impossible_statistics_is_refused(tmp_path: Path, field: str, value: float) -> None:
    from controller.errors import TableLoadError
    from controller.table import Table
    from controller.table_file import content_sha256

    raw = json.loads(synthetic_table().to_json_bytes())
    raw["scopes"]["global"]["configs"][0][field] = value
    raw["sha256"] = content_sha256(raw)  # a valid checksum: a checksum is not a plausibility check
    with pytest.raises(TableLoadError, match=field):
        Table.from_json_bytes(json.dumps(raw).encode())


def _hostile_versions(good: bytes) -> dict[str, bytes]:
    """Version files that are JSON-shaped but no table reader may crash on (issue 19, item 1)."""
    raw = json.loads(good)

    def in_source(literal: bytes) -> bytes:
        bad = {**raw, "source": {**raw["source"], "hostile": "@@"}}
        return json.dumps(bad).encode().replace(b'"@@"', literal)

    return {
        "29990101T000000000001Z-deep0000": b"[" * 200_000 + b"]" * 200_000,
        "29990101T000000000002Z-nan00000": in_source(b"NaN"),
        "29990101T000000000003Z-inf00000": in_source(b"1e400"),
        "29990101T000000000004Z-bigint00": in_source(b"9" * 5000),
        "29990101T000000000005Z-deepsrc0": in_source(b"[" * 5000 + b"]" * 5000),
    }


def test_hostile_json_versions_are_refused_typed_and_the_newest_valid_one_is_served(tmp_path: Path) -> None:
    store = TableStore(str(tmp_path / "store"))
    good = store.publish(synthetic_table())
    hostile = _hostile_versions((tmp_path / "store" / "versions" / f"{good.version_id}.json").read_bytes())
    for vid, blob in hostile.items():
        (tmp_path / "store" / "versions" / f"{vid}.json").write_bytes(blob)
    for vid in hostile:
        with pytest.raises(TableLoadError):
            store.load(vid)
    # The newest that loads is the good one, listing names every bad one, the watcher rejects them.
    newest = store.newest_valid()
    assert newest is not None and newest.version_id == good.version_id
    listed = {v.version_id: v for v in store.versions(check=True)}  # parsing is on demand
    assert all(listed[vid].created_at.startswith("INVALID") for vid in hostile)
    # A watcher that starts while LATEST names a hostile file serves the newest valid version.
    (tmp_path / "store" / LATEST).write_text(next(iter(hostile)) + "\n")
    watcher = TableWatcher(store, clock=lambda: 0.0)
    outcome, table = watcher.check()
    assert outcome == "accepted" and table is not None and table.version_id == good.version_id
    # A running one rejects each, records why, and keeps serving what it has.
    for vid in list(hostile)[1:]:
        (tmp_path / "store" / LATEST).write_text(vid + "\n")
        outcome, table = watcher.check()
        assert outcome == "rejected" and table is None, (vid, outcome)
        assert watcher.last_rejection is not None and watcher.last_rejection.version_id == vid
    assert watcher.rejected == len(hostile)  # each counted once
    assert watcher.table is not None and watcher.table.version_id == good.version_id
    out = subprocess.run([sys.executable, "-m", "lookupctl", "versions", "--store", str(tmp_path / "store")],
                         capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    assert out.returncode == 0, out.stderr
    assert all(vid in out.stdout for vid in hostile) and "Traceback" not in out.stderr
