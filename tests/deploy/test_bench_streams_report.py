"""bench.bench_streams' report, from rows of known outcome: the isolation goal is judged on both
tables (the synthetic grid and the profile's), each against its own arrivals alone, and the CLI
refuses bad sizes in one line. The measurement itself is the benchmark's (make bench), not a test's."""

from __future__ import annotations

import pytest

from bench import bench_streams as bs
from bench.stream_load import GENERATE, STREAM, LongStreams, Row, summarize


def _rows(kind: str, feasible: int, n: int = 100, acc: float = 0.5) -> list[Row]:
    return [Row(kind, 100.0, 200, i * 0.1, 0.0, 50.0, 60.0, i < feasible, i < feasible, acc, "low_4_12")
            for i in range(n)]


def _summary(scenario: str, kind: str, rows: list[Row], load: float = bs.ISOLATION_LOAD) -> dict[str, object]:
    return {"scenario": scenario, "load": load, "kind": kind, "rate_rps": 5.0, "settle_s": 0.0, "settled": True,
            "overhead_at_start_ms": 6.0, "loadavg_1m": 0.5, **summarize(rows)}


def _long() -> dict[str, object]:
    return bs._long_summary(LongStreams(finished=6, chunks=30, first_token_ms=[180.0], stream_ms=[22000.0]))


def _measured(synthetic_beside: int, profile_beside: int) -> dict[str, object]:
    summaries = [_summary("mixed", k, _rows(k, 80), load) for load in bs.LOADS for k in (STREAM, GENERATE)]
    summaries += [_summary("alone", GENERATE, _rows(GENERATE, 60)),
                  _summary("beside long streams", GENERATE, _rows(GENERATE, synthetic_beside)),
                  _summary("alone" + bs.PROFILE_TAG, GENERATE, _rows(GENERATE, 40)),
                  _summary("beside long streams" + bs.PROFILE_TAG, GENERATE, _rows(GENERATE, profile_beside))]
    knobs = [{"budget_ms": 100.0, "config": "low_4_12", "expected_latency_ms": 45.0, "expected_accuracy": 0.5,
              "frontier_size": 13}]
    setup = {"requests_per_point": 80, "proxy_p50_ms": 3.8, "proxy_ms": 5.7, "idle_overhead_ms": 6.9,
             "budgets": [100.0], "knobs": knobs, "capacity_rps": 12.0, "setup_s": 50.0, "long_streams": _long(),
             "isolation_noise": 0.06, "decode_slots": 2,
             "profile": {"tag": bs.PROFILE_TAG, "budgets": [107.0], "knobs": knobs, "capacity_rps": 6.0,
                         "idle_overhead_ms": 7.0, "requests": 240, "long_streams": _long(), "isolation_noise": 0.05}}
    return {"setup": setup, "summaries": summaries, "rows": [], "quick": False}


def _isolation(report: dict[str, object]) -> dict[str, bool | None]:
    figures = report["figures"]
    assert isinstance(figures, list)
    return {f["name"]: f["passed"] for f in figures if "beside" in f["name"]}


def test_each_table_is_judged_against_its_own_arrivals_alone() -> None:
    # synthetic 60 -> 51 feasible: -15%, not met; profile 40 -> 39: -2.5%, met; accuracy unchanged in both
    passed = _isolation(bs.report(_measured(synthetic_beside=51, profile_beside=39)))
    synthetic = {n: p for n, p in passed.items() if "synthetic grid" in n}
    profile = {n: p for n, p in passed.items() if "profile's table" in n}
    assert len(synthetic) == 2 and len(profile) == 2, passed
    assert [synthetic[n] for n in sorted(synthetic)] == [False, True]  # feasible share, accuracy
    assert all(profile.values())


def test_a_profile_share_that_moves_more_than_the_goal_fails() -> None:
    passed = _isolation(bs.report(_measured(synthetic_beside=60, profile_beside=30)))  # profile -25%
    assert [p for n, p in sorted(passed.items()) if "feasible share" in n and "profile" in n] == [False]


def test_the_tables_and_notes_name_the_profile_scenario() -> None:
    m = _measured(synthetic_beside=51, profile_beside=39)
    text = "\n".join(bs.tables(m) + bs.notes(m))
    assert "the profile's table, non-streamed at 50%" in text and "-2.5%" in text
    assert "a stream p50 22000 ms" in text and "budgets 107 ms" in text


@pytest.mark.parametrize("value", ["5", "-1", "100001"])
def test_the_cli_refuses_a_profile_size_out_of_range_in_one_line(value: str) -> None:
    with pytest.raises(SystemExit) as e:
        bs.main(["--no-doc", "--profile-requests", value])
    assert str(e.value) == f"bench_streams: error: --profile-requests={value} must be 0 or in [10, 100000]"

