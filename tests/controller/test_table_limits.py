"""Table limits (controller/table_file.py): a legal but oversized table is refused with an error
naming the value and the limit, at publish and at load, on real files (issue 19, item 8)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from controller import Table
from controller.errors import StoreError, TableLimitError
from controller.store import TableStore
from controller.table import Scope
from controller.table_file import MAX_CONFIGS, MAX_FILE_BYTES, MAX_SCOPES, make_table
from serving.lookup.table_watcher import TableWatcher
from tests.support.big_tables import big_table_bytes, plant_version
from tests.support.tables import synthetic_table

BIG_ID = "20990101T000000000001Z-big"


@pytest.mark.parametrize(
    ("scopes", "per_scope", "what", "value", "limit"),
    [
        (MAX_SCOPES + 1, 1, "scopes", MAX_SCOPES + 1, MAX_SCOPES),
        (2, MAX_CONFIGS // 2 + 1, "configs", MAX_CONFIGS + 2, MAX_CONFIGS),
    ],
)
def test_over_a_limit_is_a_typed_error_naming_value_and_limit(
    scopes: int, per_scope: int, what: str, value: int, limit: int
) -> None:
    data = big_table_bytes(scopes, per_scope, BIG_ID)
    assert len(data) < MAX_FILE_BYTES  # the count is what is refused here, not the size
    with pytest.raises(TableLimitError) as e:
        Table.from_json_bytes(data, "big.json")
    assert (e.value.what, e.value.value, e.value.limit) == (what, value, limit)
    assert f"holds {value} {what}, more than the limit of {limit}" in str(e.value)


def test_at_the_limits_a_table_loads() -> None:
    data = big_table_bytes(MAX_SCOPES, MAX_CONFIGS // MAX_SCOPES, BIG_ID)
    assert len(data) < MAX_FILE_BYTES
    assert len(Table.from_json_bytes(data, "edge.json").scope_map) == MAX_SCOPES


def test_publish_refuses_an_oversized_table(tmp_path: Path) -> None:
    base = synthetic_table()
    over = {n: Scope(n, [n], base.scope_map["global"].configs) for n in (f"d{j}" for j in range(MAX_SCOPES))}
    over["global"] = base.scope_map["global"]
    table = make_table(over, base.build, {})
    store = TableStore(str(tmp_path))
    with pytest.raises(StoreError, match=f"holds {MAX_SCOPES + 1} scopes, more than the limit of {MAX_SCOPES}") as e:
        store.publish(table)
    assert isinstance(e.value.__cause__, TableLimitError)
    assert not (tmp_path / "LATEST").exists()


def test_the_issue_table_on_a_real_store_is_rejected_counted_and_cheap(tmp_path: Path) -> None:
    """92,160 configs in 30 scopes, 55 MB: refused for its size before it is parsed; the table in
    use stays, the rejection is counted once, and a watcher that starts on it serves the newest
    valid version."""
    store = TableStore(str(tmp_path))
    good = store.publish(synthetic_table())
    watcher = TableWatcher(store, clock=lambda: 0.0)
    assert watcher.check()[0] == "accepted"
    data = big_table_bytes(30, 3072, BIG_ID)
    assert len(data) > 40_000_000
    plant_version(tmp_path, BIG_ID, data)
    started = time.perf_counter()
    outcome, _ = watcher.check()
    elapsed = time.perf_counter() - started
    assert outcome == "rejected" and watcher.table is not None and watcher.table.version_id == good.version_id
    rej = watcher.status()
    assert rej["reloads_rejected"] == 1 and rej["last_rejection"]["version_id"] == BIG_ID
    assert f"more than the limit of {MAX_FILE_BYTES}" in rej["last_rejection"]["reason"]
    assert str(len(data)) in rej["last_rejection"]["reason"]
    assert watcher.check()[0] == "unchanged" and watcher.rejected == 1  # not read again every poll
    assert elapsed < 30  # liveness only: the refusal reads the file but parses nothing
    fresh = TableWatcher(store, clock=lambda: 0.0)
    assert fresh.check()[0] == "accepted" and fresh.table is not None
    assert fresh.table.version_id == good.version_id and fresh.rejected == 1
