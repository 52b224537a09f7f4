"""TableWatcher: what the controller swaps in, and what it refuses (real store on tmp_path)."""

from __future__ import annotations

from pathlib import Path

from controller.store import LATEST, TableStore
from serving.lookup.table_watcher import TableWatcher
from tests.support.tables import synthetic_table


def _point_latest_at(root: Path, version_id: str, data: bytes) -> None:
    (root / "versions" / f"{version_id}.json").write_bytes(data)
    (root / LATEST).write_text(version_id + "\n")


def test_accepts_new_versions_and_ignores_unchanged(tmp_path: Path) -> None:
    store = TableStore(str(tmp_path))
    watcher = TableWatcher(store, clock=lambda: 0.0)
    assert watcher.check()[0] == "unavailable" and "lookupctl publish" in (watcher.last_error or "")
    first = store.publish(synthetic_table())
    outcome, table = watcher.check()
    assert outcome == "accepted" and table is not None and table.version_id == first.version_id
    assert watcher.check()[0] == "unchanged"
    second = store.publish(synthetic_table(2.0))
    assert watcher.check()[1].version_id == second.version_id  # type: ignore[union-attr]
    assert watcher.status()["reloads_accepted"] == 2


def test_bad_versions_are_rejected_once_and_the_old_table_stays(tmp_path: Path) -> None:
    store = TableStore(str(tmp_path))
    good = store.publish(synthetic_table())
    watcher = TableWatcher(store, clock=lambda: 0.0)
    watcher.check()
    data = good.to_json_bytes()
    bad_files = {
        "20990101T000000000001Z-trunc": data[: len(data) // 3],
        "20990101T000000000002Z-junk": b"\x00not json at all",
        "20990101T000000000003Z-empty": b"",
        "20990101T000000000004Z-sum": data.replace(b'"accuracy": 0.', b'"accuracy": 1.', 1),
    }
    for vid, payload in bad_files.items():
        _point_latest_at(tmp_path, vid, payload)
        assert watcher.check() == ("rejected", None)
        assert watcher.table is not None and watcher.table.version_id == good.version_id
        assert watcher.last_rejection is not None and watcher.last_rejection.version_id == vid
        assert watcher.check() == ("unchanged", None)  # not re-read every poll
    assert watcher.status()["reloads_rejected"] == len(bad_files)
    newer = store.publish(synthetic_table(3.0))
    assert watcher.check()[0] == "accepted" and watcher.table.version_id == newer.version_id


def test_pinned_version_and_retarget(tmp_path: Path) -> None:
    store = TableStore(str(tmp_path))
    first = store.publish(synthetic_table())
    store.publish(synthetic_table(2.0))
    watcher = TableWatcher(store, version=first.version_id)
    assert watcher.check()[1].version_id == first.version_id  # type: ignore[union-attr]
    watcher.retarget(store, "latest")
    assert watcher.check()[1].version_id == store.latest_id()  # type: ignore[union-attr]
