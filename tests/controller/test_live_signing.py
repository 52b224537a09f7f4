"""Live snapshots under signing (issue 19 items 3 and 7): a forged `live/*.json` never reaches a
signed table, the replica's own snapshots (written by the real LiveFeedback) do, and snapshots of
replicas long gone are removed. Real store files; the real `lookupctl recalibrate`."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from controller.live_files import LIVE_DIR, prune_live, read_snapshots, write_snapshot
from controller.live_latency import snapshot
from controller.store import TableStore
from lookupctl import main
from serving.config import FeedbackSettings
from serving.lookup.live_feedback import LiveFeedback
from tests.support.tables import synthetic_table

KEY = b"replica-and-publisher-key-0123456789"


def _replica(store: Path, name: str, scale: float) -> LiveFeedback:
    """A controller replica's feedback, holding `scale` x the served latency of the fastest config."""
    served = TableStore(str(store), verify_key=KEY).load()
    fastest = min(served.configs(), key=lambda c: c.latency_ms)
    settings = FeedbackSettings.model_validate({"min_samples": 5})
    live = LiveFeedback(settings, str(store), name, KEY)
    obs = [{"config": fastest.knobs.key, "first_token_ms": fastest.latency_ms * scale, "decode_ms_per_token": None,
            "output_tokens": 1, "queue_wait_ms": 0.0, "crops": None} for _ in range(20)]
    assert live.record(obs, served) == 20
    return live


def _forge(store: Path, name: str = "forged.json") -> None:
    """What a writer of live/ without the key can make: a well-formed snapshot, fresh, unsigned
    (its latencies could be anything; the reader must not get as far as looking at them)."""
    honest = json.loads((store / LIVE_DIR / "replica-1.json").read_text())
    now = time.time()
    fake = {**json.loads(honest["signed_snapshot"]), "replica": name[: -len(".json")],
            "start_unix": now - 60, "end_unix": now}
    (store / LIVE_DIR / name).write_text(json.dumps(fake))


@pytest.fixture()
def store(tmp_path: Path) -> Path:
    root = tmp_path / "store"
    TableStore(str(root)).publish(synthetic_table(), sign_key=KEY)
    _replica(root, "replica-1", 1.3).write()
    return root


def test_replicas_sign_their_snapshots_and_forged_ones_are_skipped_and_reported(store: Path) -> None:
    _forge(store)
    # A signed snapshot copied under another replica's name would count its samples twice.
    shutil.copy(store / LIVE_DIR / "replica-1.json", store / LIVE_DIR / "replica-2.json")
    raw = json.loads((store / LIVE_DIR / "replica-1.json").read_text())
    tampered = json.loads(raw["signed_snapshot"])
    tampered["end_unix"] += 1
    (store / LIVE_DIR / "replica-3.json").write_text(json.dumps({**raw, "signed_snapshot": json.dumps(tampered)}))
    good, skipped = read_snapshots(str(store), 600, verify_key=KEY)
    assert [s.replica for s in good] == ["replica-1"]
    reasons = dict(line.split(": ", 1) for line in skipped)
    assert "not signed" in reasons["forged.json"]
    assert "whose file is another" in reasons["replica-2.json"]
    assert "signature does not match" in reasons["replica-3.json"]
    # Without a key every well-formed snapshot is read, signed or not (stores without signing).
    assert len(read_snapshots(str(store), 600)[0]) == 4


def test_recalibrate_with_a_key_never_signs_a_forged_snapshot(store: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    key_file = tmp_path / "key"
    key_file.write_bytes(KEY)
    (store / LIVE_DIR / "replica-1.json").unlink()
    _replica(store, "replica-1", 1.3).write()
    honest = json.loads((store / LIVE_DIR / "replica-1.json").read_text())
    (store / LIVE_DIR / "replica-1.json").write_text(honest["signed_snapshot"])  # stripped of its signature
    before = TableStore(str(store)).latest_id()
    assert main(["recalibrate", "--store", str(store), "--sign-key-file", str(key_file), "--min-samples", "5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not signed" in err[0] and "no fresh live snapshots" in err[0]
    assert TableStore(str(store)).latest_id() == before  # nothing published
    # With the replica's signed snapshot beside the forged one: only the signed one is used, and the
    # skipped one is reported.
    _replica(store, "replica-9", 1.3).write()
    assert main(["recalibrate", "--store", str(store), "--sign-key-file", str(key_file), "--min-samples", "5",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["published"] and any(s.startswith("replica-1.json: not signed") for s in out["skipped_snapshots"])
    published = TableStore(str(store), verify_key=KEY).load()
    assert published.version_id == out["published"]
    assert published.source["live_recalibration"]["window"]["replicas"] == ["replica-9"]


def test_stale_snapshots_of_gone_replicas_are_removed(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    live = store / LIVE_DIR
    for i in range(5):  # replicas started and gone two days ago
        (live / f"gone-{i}.json").write_text("{}")
        old = time.time() - 2 * 86400
        os.utime(live / f"gone-{i}.json", (old, old))
    assert prune_live(str(store), 86400, dry_run=True) == [f"gone-{i}.json" for i in range(5)]
    assert len(list(live.glob("*.json"))) == 6
    # A writing replica removes them as it writes its own.
    write_snapshot(str(store), "replica-1", snapshot({}, replica="replica-1", window_s=60, start_unix=0,
                                                     end_unix=time.time(), relative_accuracy=0.01), KEY)
    assert sorted(p.name for p in live.glob("*.json")) == ["replica-1.json"]
    # And `lookupctl prune` does too (for stores whose replicas all stopped).
    (live / "gone-x.json").write_text("{}")
    os.utime(live / "gone-x.json", (0, 0))
    assert main(["prune", "--store", str(store), "--keep", "5"]) == 0
    assert "removed 1 stale live/ snapshots" in capsys.readouterr().out
    assert sorted(p.name for p in live.glob("*.json")) == ["replica-1.json"]
