"""The table store under hostile conditions: concurrent publishers, blocking reads, odd files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from controller.errors import PointerError, StoreReadError
from controller.store import LATEST, TableStore
from controller.store_fs import call_with_timeout
from lookupctl import main as lookupctl
from serving.lookup.table_watcher import TableWatcher
from tests.support.publisher import PUBLISHER
from tests.support.tables import synthetic_table

PUBLISHERS, ROUNDS = 4, 10


def test_concurrent_publishes_lose_nothing(tmp_path: Path) -> None:
    store_dir, table_file = tmp_path / "store", tmp_path / "t.json"
    synthetic_table().save(table_file)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", PUBLISHER, str(store_dir), str(table_file), str(ROUNDS)],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
        )
        for _ in range(PUBLISHERS)
    ]
    reports = []
    for p in procs:
        out, _ = p.communicate(timeout=300)
        assert p.returncode == 0
        reports += [json.loads(line) for line in out.splitlines()]
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
    assert lookupctl(["versions", "--store", str(tmp_path)]) == 0
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
