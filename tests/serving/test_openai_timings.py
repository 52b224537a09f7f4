"""The `timings` extra of a stream's finish chunk: the replica's times and the router's first chunk, never NaN
or Infinity in JSON."""

from __future__ import annotations

import json

from serving.ingress.openai_api import timings_extra


def test_the_replica_times_are_kept_rounded() -> None:
    out = {"queue_wait_ms": 1.23456, "replica_first_token_ms": 20, "replica_ms": 80.5, "first_token_ms": 18.0,
           "timings_ms": {"vision": 3.0, "prefill": 15.0, "decode": 60.25}}
    assert timings_extra(out, 25.12345) == {"queue_wait_ms": 1.235, "replica_first_token_ms": 20.0,
                                            "replica_ms": 80.5, "first_token_ms": 18.0, "decode_ms": 60.25,
                                            "router_first_token_ms": 25.123}


def test_missing_or_non_finite_times_are_null_and_the_chunk_stays_json() -> None:
    out = {"queue_wait_ms": float("nan"), "replica_first_token_ms": float("inf"), "replica_ms": True,
           "first_token_ms": "12", "timings_ms": "not a dict"}
    got = timings_extra(out, float("nan"))
    assert got == dict.fromkeys(("queue_wait_ms", "replica_first_token_ms", "replica_ms", "first_token_ms",
                                 "decode_ms", "router_first_token_ms"))
    assert json.loads(json.dumps(got, allow_nan=False)) == got
    assert timings_extra({})["decode_ms"] is None
    assert timings_extra({})["router_first_token_ms"] is None
