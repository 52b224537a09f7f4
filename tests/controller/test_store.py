"""TableStore and `lookupctl publish | versions | rollback` on real files."""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path

import pytest

from controller.errors import StoreError, TableLoadError
from controller.store import LATEST, TableStore, new_version_id
from lookupctl import main
from tests.support.tables import synthetic_table


@pytest.fixture(scope="module")
def table():
    return synthetic_table()


def test_publish_writes_version_then_moves_latest(tmp_path: Path, table) -> None:
    store = TableStore(str(tmp_path))
    assert store.latest_id() is None
    published = store.publish(table)
    assert (tmp_path / "versions" / f"{published.version_id}.json").is_file()
    assert (tmp_path / LATEST).read_text().strip() == published.version_id
    loaded = store.load()
    assert loaded.version_id == published.version_id
    assert loaded.sha256 == published.sha256
    # No temp files left behind by the atomic writes.
    assert not [p for p in tmp_path.rglob(".tmp-*")]


def test_version_ids_sort_by_publish_time(tmp_path: Path, table) -> None:
    store = TableStore(str(tmp_path))
    fixed = datetime(2025, 1, 1, tzinfo=timezone.utc)
    ids = [store.publish(table, now=fixed).version_id for _ in range(5)]  # same clock reading
    assert ids == sorted(ids) and len(set(ids)) == 5
    assert store.version_ids() == ids
    assert store.latest_id() == ids[-1]
    assert new_version_id(fixed, "ab" * 32) < new_version_id(datetime(2025, 1, 2, tzinfo=timezone.utc), "00")


def test_versions_and_rollback(tmp_path: Path, table) -> None:
    store = TableStore(str(tmp_path))
    first = store.publish(table)
    second = store.publish(synthetic_table(latency_scale=2.0))
    infos = store.versions()
    assert [i.version_id for i in infos] == [first.version_id, second.version_id]
    assert [i.is_latest for i in infos] == [False, True]
    assert infos[0].num_configs == len(table.all_knobs())
    store.rollback(first.version_id)
    assert store.load().version_id == first.version_id


def test_rollback_to_unknown_or_bad_version_is_refused(tmp_path: Path, table) -> None:
    store = TableStore(str(tmp_path))
    good = store.publish(table)
    with pytest.raises(StoreError, match="not found"):
        store.rollback("20990101T000000000000Z-deadbeef")
    (tmp_path / "versions" / "20990101T000000000000Z-bad.json").write_text("{not json")
    with pytest.raises(StoreError, match="refusing to roll back"):
        store.rollback("20990101T000000000000Z-bad")
    assert store.latest_id() == good.version_id


def test_load_rejects_corrupt_and_truncated_files(tmp_path: Path, table) -> None:
    store = TableStore(str(tmp_path))
    good = store.publish(table)
    data = (tmp_path / "versions" / f"{good.version_id}.json").read_bytes()
    (tmp_path / "versions" / "v-truncated.json").write_bytes(data[: len(data) // 2])
    flipped = data.replace(b'"accuracy": 0.', b'"accuracy": 1.', 1)
    assert flipped != data
    (tmp_path / "versions" / "v-corrupt.json").write_bytes(flipped)
    for vid in ("v-truncated", "v-corrupt"):
        with pytest.raises(TableLoadError):
            store.load(vid)
    listed = {i.version_id: i for i in store.versions(check=True)}  # parsing is on demand
    assert listed["v-corrupt"].created_at.startswith("INVALID")


def test_bad_version_ids_are_refused(tmp_path: Path) -> None:
    store = TableStore(str(tmp_path))
    for bad in ("../etc/passwd", "", ".hidden", " x"):
        with pytest.raises(StoreError, match="not valid"):
            store.read_bytes(bad)


def test_empty_store_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="lookupctl publish"):
        TableStore(str(tmp_path)).load()


def test_fsspec_store(table) -> None:
    pytest.importorskip("fsspec")
    store = TableStore("memory://lookup-test-store")
    published = store.publish(table)
    assert store.latest_id() == published.version_id
    assert store.load().sha256 == published.sha256
    assert [i.version_id for i in store.versions()] == [published.version_id]


def test_cli_publish_versions_rollback(tmp_path: Path, table, capsys: pytest.CaptureFixture[str]) -> None:
    table_path = tmp_path / "table.json"
    table.save(table_path)
    store = str(tmp_path / "store")
    assert main(["publish", str(table_path), "--store", store, "--json"]) == 0
    first = json.loads(capsys.readouterr().out)["version_id"]
    assert main(["publish", str(table_path), "--store", store]) == 0
    assert "published" in capsys.readouterr().out
    assert main(["versions", "--store", store, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [v["latest"] for v in listed] == [False, True]
    assert main(["versions", "--store", store]) == 0
    assert first in capsys.readouterr().out
    assert main(["rollback", "--store", store, "--to", first]) == 0
    assert TableStore(store).latest_id() == first


def test_cli_publish_refuses_an_invalid_table_with_the_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"schema_version": 1, "scopes": {}}')
    store = tmp_path / "store"
    assert main(["publish", str(bad), "--store", str(store)]) == 2
    err = capsys.readouterr().err
    assert "lookupctl publish: error" in err and "bad.json" in err
    assert not os.path.exists(store / LATEST)
