"""scheduling: deadline on a real local Serve: a replica that runs one request at a time takes a
tight-budget request before loose-budget ones that queued earlier (FIFO would not)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from ray import serve

from controller.store import TableStore
from serving.app import build_app_from_config
from serving.config import ServingConfig
from tests.support.tables import synthetic_table

pytestmark = pytest.mark.serve


@pytest.fixture(scope="module")
def base(serve_port: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    store = tmp_path_factory.mktemp("edf_store")
    TableStore(str(store)).publish(synthetic_table())
    config = ServingConfig.model_validate(
        {"controller": {"store": str(store)},
         "model": {"backend_options": {"latency_scale": 20.0}, "scheduling": "deadline",
                   "batch": {"max_batch_size": 1, "batch_wait_timeout_s": 0}}}
    )
    serve.run(build_app_from_config(config), name="edf", route_prefix="/edf")
    yield f"http://127.0.0.1:{serve_port}/edf"
    serve.delete("edf")


def test_a_tight_budget_overtakes_loose_ones_queued_before_it(base: str) -> None:
    finished: list[str] = []
    lock = threading.Lock()

    def send(name: str, budget: float) -> None:
        r = httpx.post(f"{base}/v1/generate", json={"prompt": name, "max_new_tokens": 16},
                       headers={"X-Latency-Budget-Ms": str(budget)}, timeout=60)
        assert r.status_code == 200, r.text
        with lock:
            finished.append(name)

    send("warm", 60_000)  # ~300 ms of simulated model time per request: a queue builds behind it
    finished.clear()
    loose = [threading.Thread(target=send, args=(f"loose{i}", 60_000)) for i in range(6)]
    for t in loose:
        t.start()
        time.sleep(0.02)  # arrival order: loose0..loose5, then the tight one
    time.sleep(0.2)  # the replica is busy and the loose ones wait (setup, not a timing assertion)
    tight = threading.Thread(target=send, args=("tight", 5_000))
    tight.start()
    for t in [*loose, tight]:
        t.join()
    # FIFO would finish it last; deadline order lets it in before the loose ones still waiting.
    assert finished.index("tight") <= len(finished) - 3, finished
