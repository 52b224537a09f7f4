"""Version order in the store (issue 19 items 2, 4, 12): LATEST moves back only as a signed rollback
record allows, planted names in versions/ never block a publish, and publish keeps a built table's id
when it can. Real store files in tmp_path; the real TableWatcher."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from controller.errors import RollbackRefusedError
from controller.rollback_record import ROLLBACK_FILE, RollbackRecord
from controller.store import LATEST, TableStore
from controller.version_id import publish_time
from serving.lookup.table_watcher import TableWatcher
from tests.support.tables import synthetic_table

KEY = b"k" * 32


def _signed_store(root: Path, n: int) -> tuple[TableStore, list[str]]:
    store = TableStore(str(root), verify_key=KEY)
    ids = [store.publish(synthetic_table(1.0 + i / 10), sign_key=KEY).version_id for i in range(n)]
    return store, ids


def test_replayed_older_signed_version_is_refused_counted_and_the_current_one_kept(tmp_path: Path) -> None:
    store, (v1, v2) = _signed_store(tmp_path, 2)
    watcher = TableWatcher(store, clock=lambda: 0.0)
    assert watcher.check()[1].version_id == v2  # type: ignore[union-attr]
    (tmp_path / LATEST).write_text(v1 + "\n")  # the replay: an older, validly signed id
    with pytest.raises(RollbackRefusedError, match="no rollback record"):
        store.load()
    assert store.load(v1).version_id == v1  # pinned, it is the operator's explicit choice
    outcome, table = watcher.check()
    assert outcome == "rejected" and table is None
    status = watcher.status()
    assert status["table_version"] == v2 and status["reloads_rejected"] == 1
    assert status["last_rejection"]["version_id"] == v1 and "only move forward" in status["last_rejection"]["reason"]
    assert watcher.check()[0] == "unchanged" and watcher.rejected == 1  # counted once, not every poll
    # A controller that starts meanwhile serves the newest signed version, not the replay.
    fresh = TableWatcher(store, clock=lambda: 0.0)
    assert fresh.check()[1].version_id == v2 and fresh.rejected == 1  # type: ignore[union-attr]
    # The sanctioned way back: a signed rollback record, which the running watcher notices.
    store.rollback(v1, sign_key=KEY)
    assert watcher.check()[1].version_id == v1  # type: ignore[union-attr]
    assert store.load().version_id == v1


def test_a_kept_rollback_record_cannot_be_replayed_after_a_later_publish(tmp_path: Path) -> None:
    store, (v1, _v2) = _signed_store(tmp_path, 2)
    store.rollback(v1, sign_key=KEY)
    v3 = store.publish(synthetic_table(3.0), sign_key=KEY).version_id
    watcher = TableWatcher(store, clock=lambda: 0.0)
    assert watcher.check()[1].version_id == v3  # type: ignore[union-attr]
    (tmp_path / LATEST).write_text(v1 + "\n")  # the old record still names v1
    with pytest.raises(RollbackRefusedError, match="made before"):
        store.load()
    assert watcher.check()[0] == "rejected" and watcher.table is not None and watcher.table.version_id == v3


@pytest.mark.parametrize("record_key", [None, b"w" * 32], ids=["unsigned", "wrong-key"])
def test_a_rollback_record_without_the_key_allows_nothing(tmp_path: Path, record_key: bytes | None) -> None:
    store, (v1, v2) = _signed_store(tmp_path, 2)
    # A writer without the store's key writes its own record (rollback itself refuses a wrong key).
    record = RollbackRecord(v1, v2, v2, "now")
    (tmp_path / ROLLBACK_FILE).write_bytes((record.signed(record_key) if record_key else record).to_bytes())
    (tmp_path / LATEST).write_text(v1 + "\n")
    with pytest.raises(RollbackRefusedError, match="not signed with this key"):
        store.load()
    # Hand-edited to name another target, a signed record is no longer valid either.
    store.rollback(v1, sign_key=KEY)
    raw = json.loads((tmp_path / ROLLBACK_FILE).read_text())
    (tmp_path / ROLLBACK_FILE).write_text(json.dumps({**raw, "newest": "99991231T000000000000Z-ffffffff"}))
    with pytest.raises(RollbackRefusedError):
        store.load()
    (tmp_path / ROLLBACK_FILE).write_bytes(b"[" * 3000)  # junk: a typed refusal, never a crash
    with pytest.raises(RollbackRefusedError, match="unusable"):
        store.load()
    assert v2 > v1


def test_unsigned_stores_keep_trusting_their_writers(tmp_path: Path) -> None:
    store = TableStore(str(tmp_path))
    v1 = store.publish(synthetic_table()).version_id
    store.publish(synthetic_table(2.0))
    (tmp_path / LATEST).write_text(v1 + "\n")
    assert store.load().version_id == v1


def test_rollback_record_round_trips_and_names_its_fields() -> None:
    record = RollbackRecord("20250101T000000000000Z-aaaaaaaa", None, "20250102T000000000000Z-bbbbbbbb", "t")
    signed = record.signed(KEY)
    assert RollbackRecord.from_bytes(signed.to_bytes()) == signed and signed.signed_by(KEY)
    assert not record.signed_by(KEY)
    with pytest.raises(Exception, match="'to'"):
        RollbackRecord.from_bytes(json.dumps({**json.loads(record.to_bytes()), "to": "../x"}).encode())


@pytest.mark.parametrize(
    "planted",
    ["zzzz", "99999999T999999999999Z-ffffffff", "29990101T000000000000Z-abcdef01", "notes.txt"],
)
def test_one_planted_file_never_blocks_a_publish(tmp_path: Path, planted: str) -> None:
    store = TableStore(str(tmp_path))
    first = store.publish(synthetic_table())
    (tmp_path / "versions" / f"{planted}.json").touch()
    before = datetime.now(timezone.utc)
    second = store.publish(synthetic_table(2.0))
    signed = store.publish(synthetic_table(3.0), sign_key=KEY)
    assert store.latest_id() == signed.version_id
    assert first.version_id < second.version_id < signed.version_id
    stamp = publish_time(signed.version_id)
    assert stamp is not None and before - timedelta(seconds=5) < stamp < before + timedelta(minutes=5)
    assert store.newest_id() == signed.version_id  # the planted name does not count as newest
    listed = {v.version_id: v for v in store.versions()}
    if planted in listed:
        assert "ignored by publish" in listed[planted].note


def test_a_planted_latest_far_in_the_future_does_not_block_either(tmp_path: Path) -> None:
    store = TableStore(str(tmp_path))
    planted = "29990101T000000000000Z-abcdef01"
    (tmp_path / "versions").mkdir()
    (tmp_path / "versions" / f"{planted}.json").write_text("{}")
    (tmp_path / LATEST).write_text(planted + "\n")
    published = store.publish(synthetic_table())
    assert store.latest_id() == published.version_id and published.version_id < planted


def test_publish_keeps_the_built_id_when_it_can_and_says_why_not(tmp_path: Path) -> None:
    store = TableStore(str(tmp_path))
    built = synthetic_table()
    report = store.publish_report(built)
    assert report.table.version_id == built.version_id and report.id_note == ""
    assert report.table.sha256 == built.sha256  # the same file content as the one build wrote
    again = store.publish_report(built)
    assert again.table.version_id != built.version_id and "already in the store" in again.id_note
    older = synthetic_table(2.0)
    newer = store.publish(synthetic_table(3.0))
    late = store.publish_report(older)  # built before `newer` was published: a new id keeps the order
    assert older.version_id < newer.version_id < late.table.version_id
    assert "newer version" in late.id_note
