"""Live latency sketches, their snapshot files, recalibrated tables and `lookupctl recalibrate`."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from controller.errors import LiveDataError, SketchError
from controller.knobs import Knobs
from controller.live_files import read_snapshots, write_snapshot
from controller.live_latency import LiveWindow, Observation, merge_snapshots, read_snapshot, snapshot
from controller.live_sketch import LatencySketch
from controller.recalibrate import drift, recalibrate
from controller.store import TableStore
from lookupctl import main
from tests.controller.tables import grid, table_of

LOW = Knobs("low", 4, 12)


def _obs(ms: float, knobs: Knobs = LOW) -> Observation:
    return Observation(knobs, ms, 2.0, 10, 1.0, 2)


def _window_with(table_scale: float, n: int, knobs: Knobs = LOW, base: float = 116.0) -> LiveWindow:
    rng = random.Random(0)
    w = LiveWindow(60.0)
    w.add([_obs(base * table_scale * rng.lognormvariate(0, 0.05), knobs) for _ in range(n)], now=100.0)
    return w


def test_quantiles_within_relative_accuracy_and_merge_equals_union() -> None:
    a, b, both = LatencySketch(0.01), LatencySketch(0.01), LatencySketch(0.01)
    values = [float(v) for v in range(1, 1001)]
    for i, v in enumerate(values):
        (a if i % 2 else b).add(v)
        both.add(v)
    a.merge(b)
    assert a.count == both.count == 1000 and a.mean() == pytest.approx(500.5)
    assert a.quantile(0.95) == pytest.approx(950, rel=0.02) == both.quantile(0.95)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -1.0, 1e12, True, "5"])
def test_sketch_refuses_bad_values(bad: object) -> None:
    with pytest.raises(SketchError, match="not valid"):
        LatencySketch().add(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("field,value", [("first_token_ms", float("nan")), ("first_token_ms", None),
                                         ("queue_wait_ms", -3), ("output_tokens", 1.5), ("config", "x_1_2"),
                                         ("config", "low_4_" + "9" * 5000), ("crops", 10**9)])
def test_bad_observations_are_typed_errors(field: str, value: object) -> None:
    d = {"config": "low_4_12", "first_token_ms": 10.0, "output_tokens": 4}
    d[field] = value
    with pytest.raises(LiveDataError):
        Observation.from_dict(d)


def test_window_forgets_old_buckets() -> None:
    w = LiveWindow(40.0)
    w.add([_obs(10.0)], now=0.0)
    w.add([_obs(20.0)], now=25.0)
    assert w.merged(30.0)[LOW].count == 2
    assert w.merged(45.0)[LOW].count == 1  # the t=0 bucket is more than a window old
    assert w.merged(200.0) == {}


def test_snapshot_round_trip_and_hostile_snapshots() -> None:
    live = _window_with(1.0, 200).merged(100.0)
    snap = snapshot(live, replica="r1", window_s=60, start_unix=1.0, end_unix=2.0, relative_accuracy=0.01)
    back = read_snapshot(json.loads(json.dumps(snap)))
    assert back.configs[LOW].count == 200
    assert back.configs[LOW].first_token.quantile(0.95) == pytest.approx(live[LOW].first_token.quantile(0.95))
    bad = json.loads(json.dumps(snap))
    bad["configs"]["low_4_12"]["first_token"]["ddsketch_b64"] = "not base64!!"
    with pytest.raises(LiveDataError, match="not a DDSketch"):
        read_snapshot(bad)
    bad = json.loads(json.dumps(snap))
    bad["configs"]["low_4_12"]["first_token"]["min"] = float("nan")
    with pytest.raises(LiveDataError):
        read_snapshot(bad)
    with pytest.raises(LiveDataError, match="format"):
        read_snapshot({"format": "other"})


def test_recalibrate_takes_live_latency_keeps_accuracy_and_thin_configs() -> None:
    table = table_of(grid())
    low = next(c for c in table.configs() if c.knobs == LOW)
    live = _window_with(1.3, 300, base=low.latency_ms).merged(100.0)
    other = Knobs("high", 8, 16)
    live.update(_window_with(1.3, 5, knobs=other).merged(100.0))  # too few samples
    new = recalibrate(table, live, min_samples=50, window={"window_s": 60})
    c = next(c for c in new.configs() if c.knobs == LOW)
    assert c.accuracy == low.accuracy
    assert c.latency_ms == pytest.approx(low.latency_ms * 1.3, rel=0.05)
    kept = next(c for c in new.configs() if c.knobs == other)
    assert kept.latency_ms == next(c for c in table.configs() if c.knobs == other).latency_ms
    rec = new.source["live_recalibration"]
    assert rec["recalibrated"] == ["low_4_12"] and rec["samples_per_config"] == {"low_4_12": 300, "high_8_16": 5}
    assert "high_8_16" in rec["kept_profiled"] and rec["from_version"] == table.version_id
    assert new.version_id != table.version_id
    assert drift(table, live, min_samples=50)["low_4_12"] == pytest.approx(0.3, abs=0.1)


def test_cli_recalibrate_publishes_and_rollback_restores(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store_dir = str(tmp_path / "store")
    store = TableStore(store_dir)
    first = store.publish(table_of(grid()))
    low = next(c for c in first.configs() if c.knobs == LOW)
    live = _window_with(1.3, 300, base=low.latency_ms).merged(100.0)
    import time

    now = time.time()
    write_snapshot(store_dir, "replica/1", snapshot(live, replica="replica/1", window_s=60, start_unix=now - 60,
                                                     end_unix=now, relative_accuracy=0.01))
    (tmp_path / "store" / "live" / "junk.json").write_text("{not json")
    assert main(["recalibrate", "--store", store_dir, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["from_version"] == first.version_id and out["recalibrated"] == ["low_4_12"]
    assert any("junk.json" in s for s in out["skipped_snapshots"])
    new = store.load("latest")
    assert new.version_id == out["published"]
    assert next(c for c in new.configs() if c.knobs == LOW).latency_ms == pytest.approx(low.latency_ms * 1.3, rel=0.05)
    assert main(["rollback", "--store", store_dir, "--to", first.version_id]) == 0
    assert store.load("latest").version_id == first.version_id


def test_cli_recalibrate_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store_dir = str(tmp_path / "store")
    TableStore(store_dir).publish(table_of(grid()))
    assert main(["recalibrate", "--store", store_dir]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lookupctl recalibrate: error: no fresh live snapshots") and "\n" not in err
    assert main(["recalibrate", "--store", store_dir, "--min-samples", "0"]) == 2
    assert "--min-samples=0" in capsys.readouterr().err


def test_read_snapshots_skips_stale(tmp_path: Path) -> None:
    live = _window_with(1.0, 10).merged(100.0)
    write_snapshot(str(tmp_path), "r", snapshot(live, replica="r", window_s=60, start_unix=0, end_unix=100,
                                                relative_accuracy=0.01))
    good, skipped = read_snapshots(str(tmp_path), max_age_s=50, now=1000)
    assert good == [] and "older than" in skipped[0]
    good, _ = read_snapshots(str(tmp_path), max_age_s=5000, now=1000)
    assert merge_snapshots(good)[LOW].count == 10


def test_cli_recalibrate_signs_for_stores_that_verify(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import time

    key_file = tmp_path / "key"
    key_file.write_text("a-secret-key-of-some-length-0123456789")
    store_dir = str(tmp_path / "store")
    first = TableStore(store_dir).publish(table_of(grid()), sign_key=key_file.read_text().encode())
    low = next(c for c in first.configs() if c.knobs == LOW)
    live = _window_with(1.3, 100, base=low.latency_ms).merged(100.0)
    now = time.time()
    # Signed by the replica, as LiveFeedback writes it with the controllers' key (item 3 of issue 19).
    write_snapshot(store_dir, "r", snapshot(live, replica="r", window_s=60, start_unix=now - 60, end_unix=now,
                                            relative_accuracy=0.01), key_file.read_text().encode())
    assert main(["recalibrate", "--store", store_dir, "--sign-key-file", str(key_file), "--json"]) == 0
    published = json.loads(capsys.readouterr().out)["published"]
    verifying = TableStore(store_dir, verify_key=key_file.read_text().encode())
    assert verifying.load("latest").version_id == published
