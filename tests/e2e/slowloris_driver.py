"""Runs one local Serve with the environment it was given (the slowloris test and the hostile
benchmark set the HAProxy client timeout here: Serve reads it where Ray starts), deploys the app,
opens half-sent connections and prints the result as one JSON line.

    python -m tests.e2e.slowloris_driver CONNECTIONS WAIT_S
"""

from __future__ import annotations

import dataclasses
import json
import sys
import tempfile

from ray import serve

from controller.store import TableStore
from serving.app import build_app_from_config
from serving.config import ServingConfig
from serving.local import free_port, local_serve
from tests.support.slowloris import slowloris
from tests.support.tables import synthetic_table


def main() -> None:
    connections, wait_s = int(sys.argv[1]), float(sys.argv[2])
    port = free_port()
    store = tempfile.mkdtemp(prefix="slowloris-")
    TableStore(store).publish(synthetic_table())
    with local_serve(port, quiet=True):
        config = ServingConfig.model_validate(
            {"controller": {"store": store}, "model": {"backend_options": {"latency_scale": 0}}}
        )
        serve.run(build_app_from_config(config), name="slow", route_prefix="/slow")
        url = f"http://127.0.0.1:{port}/slow/v1/knobs?budget_ms=120"
        result = slowloris("127.0.0.1", port, connections, wait_s, url)
    print("RESULT " + json.dumps(dataclasses.asdict(result)), flush=True)


if __name__ == "__main__":
    main()
