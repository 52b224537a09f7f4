"""The controller's feedback step on a real filesystem store: a snapshot the store refuses does not
stop the automatic publish of what was measured, and both failures are said."""

from pathlib import Path

from controller.live_files import LIVE_DIR
from controller.store import TableStore
from serving.config import FeedbackSettings
from serving.lookup.live_feedback import LiveFeedback
from tests.support.tables import synthetic_table


def _drifting(store: Path) -> tuple[LiveFeedback, object]:
    table = TableStore(str(store)).publish(synthetic_table())
    served = TableStore(str(store)).load(table.version_id)
    settings = FeedbackSettings.model_validate(
        {"min_samples": 5, "auto": {"enabled": True, "drift_share": 0.15, "drift_for_s": 0, "cooldown_s": 0}})
    live = LiveFeedback(settings, str(store), "replica-1")
    config = served.configs()[0]
    obs = [{"config": config.knobs.key, "first_token_ms": config.latency_ms * 1.3, "decode_ms_per_token": None,
            "output_tokens": 1, "queue_wait_ms": 0.0, "crops": None} for _ in range(20)]
    assert live.record(obs, served) == 20
    return live, served


def test_a_refused_snapshot_does_not_stop_the_publish(tmp_path: Path) -> None:
    live, served = _drifting(tmp_path)
    (tmp_path / LIVE_DIR).write_text("a file where the snapshot folder belongs")
    published, errors = live.flush(served)
    assert published is not None and TableStore(str(tmp_path)).latest_id() == published
    assert len(errors) == 1 and errors[0].startswith("snapshot: ")


def test_both_failures_are_said(tmp_path: Path) -> None:
    live, served = _drifting(tmp_path)
    published, errors = live.flush(None)  # no table served: nothing to publish, nothing failed
    assert (published, errors) == (None, [])
    assert (tmp_path / LIVE_DIR / "replica-1.json").is_file()
    blocked = tmp_path / "not-a-store"
    blocked.write_text("a file where the store belongs")
    live.store = str(blocked)  # the store's path turned into a file under the controller
    published, errors = live.flush(served)
    assert published is None and [e.split(":")[0] for e in errors] == ["snapshot", "publish"]
