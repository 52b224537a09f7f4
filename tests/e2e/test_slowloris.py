"""Slowloris against a real local Serve on the fast path (issue 19 item 9): connections that send
part of a request and then nothing are closed by HAProxy's `timeout client`
(RAY_SERVE_HAPROXY_TIMEOUT_CLIENT_S, set where Ray starts; docs/security.md, "Slow clients"),
and normal requests keep succeeding meanwhile. Its own Ray (a subprocess): the variable is read
when Serve starts, so the session's shared Serve cannot take it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from serving.local import free_port

pytestmark = pytest.mark.serve
ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_CLIENT_S = 4  # short for the test; docs/security.md recommends 30 in production
CONNECTIONS = 500


def test_half_sent_requests_are_closed_within_the_client_timeout() -> None:
    env = {
        **os.environ,
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        "RAY_SERVE_HAPROXY_TIMEOUT_CLIENT_S": str(TIMEOUT_CLIENT_S),
        "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()),  # beside the session's shared Serve
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port()),
    }
    run = subprocess.run([sys.executable, "-m", "tests.e2e.slowloris_driver", str(CONNECTIONS), "60"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    line = next((x for x in run.stdout.splitlines() if x.startswith("RESULT ")), None)
    assert line is not None, run.stdout[-2000:] + run.stderr[-3000:]
    result = json.loads(line[len("RESULT "):])
    assert result["opened"] == CONNECTIONS and result["closed_by_server"] == CONNECTIONS, result
    # Closed within the timeout plus HAProxy's timer granularity and one poll of the checker.
    assert result["seconds"] <= TIMEOUT_CLIENT_S + 6, result
    assert result["normal_sent"] >= 1 and result["normal_ok"] == result["normal_sent"], result
