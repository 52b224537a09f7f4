"""scheduling: deadline on a real local Serve. The device batches continuously (a newcomer joins the
running decode batch between two steps), so a tight budget that arrives behind six loose ones gets
its first token after their prefills, not after their decodes; which of several waiting groups the
device takes first (earliest deadline) is held by tests/serving/test_device.py."""

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
from tests.support.serve import run_routed
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
    run_routed(build_app_from_config(config), name="edf", route_prefix="/edf")
    yield f"http://127.0.0.1:{serve_port}/edf"
    serve.delete("edf")


def test_a_tight_budget_queued_behind_loose_ones_gets_its_first_token_early(base: str) -> None:
    answers: dict[str, dict[str, object]] = {}
    lock = threading.Lock()

    def send(name: str, budget: float) -> None:
        started = time.perf_counter()
        r = httpx.post(f"{base}/v1/generate", json={"prompt": name, "max_new_tokens": 16},
                       headers={"X-Latency-Budget-Ms": str(budget)}, timeout=60)
        assert r.status_code == 200, r.text
        body = r.json()
        with lock:
            answers[name] = {"ms": (time.perf_counter() - started) * 1000, **body}

    send("warm", 60_000)  # ~300 ms of simulated model time per request, most of it decode
    loose = [threading.Thread(target=send, args=(f"loose{i}", 60_000)) for i in range(6)]
    for t in loose:
        t.start()
        time.sleep(0.02)
    time.sleep(0.2)  # the loose ones are in the device (setup, not a timing assertion)
    tight = threading.Thread(target=send, args=("tight", 5_000))
    tight.start()
    for t in [*loose, tight]:
        t.join()
    got = answers["tight"]
    output = got["output"]
    assert isinstance(output, dict)
    decode = float(output["timings_ms"]["decode"])
    prefill = float(output["timings_ms"]["prefill"]) + float(output["timings_ms"]["vision"])
    first = float(got["ms"]) - decode  # its first token as the client saw it
    # One request at a time it would wait for six whole loose calls (~1.8 s); joining the running
    # batch it waits for their prefills at most.
    assert first < 6 * prefill + 1000, (first, prefill, decode)
    assert float(output["queue_wait_ms"]) < 1000, output["queue_wait_ms"]
