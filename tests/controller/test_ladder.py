"""The ladder (controller.ladder): the rungs late binding chooses from make the same decisions as
`Table.resolve` (first token) and `resolve_total` (whole request) for every budget."""

from __future__ import annotations

import numpy as np
import pytest

from controller.decode_budget import resolve_total
from controller.errors import TokenCountError
from controller.ladder import highest_fitting, ladder
from tests.support.tables import synthetic_table


def test_first_token_ladder_is_the_frontier_and_decides_like_resolve() -> None:
    table = synthetic_table(latency_scale=0.5, decode_ms_per_token=2.0)
    rungs = ladder(table)
    latencies = [r.latency_ms for r in rungs]
    assert [r.stats for r in rungs] == table.frontier()
    assert all(a.latency_ms <= b.latency_ms and a.stats.accuracy < b.stats.accuracy for a, b in zip(rungs, rungs[1:]))
    for budget in np.linspace(1, 200, 397):
        d = table.resolve(float(budget))
        assert rungs[highest_fitting(latencies, float(budget) * (1 + table.tolerance))].stats.knobs == d.knobs


@pytest.mark.parametrize("tokens", [0, 1, 16, 128])
def test_whole_request_ladder_decides_like_resolve_total(tokens: int) -> None:
    table = synthetic_table(latency_scale=0.5, decode_ms_per_token=2.0)
    rungs = ladder(table, None, tokens)
    assert all(a.latency_ms <= b.latency_ms and a.stats.accuracy < b.stats.accuracy for a, b in zip(rungs, rungs[1:]))
    for budget in np.linspace(1, 600, 300):
        d, decode = resolve_total(table, float(budget), tokens)
        r = rungs[highest_fitting([r.latency_ms for r in rungs], float(budget) * (1 + table.tolerance))]
        assert r.stats.knobs == d.knobs and r.latency_ms == pytest.approx(d.expected_latency_ms)


def test_service_time_is_the_mean_where_the_table_has_one() -> None:
    table = synthetic_table(latency_scale=0.5)
    for r in ladder(table):
        expected = r.stats.latency_mean if r.stats.latency_mean else r.stats.latency_ms
        assert r.service_ms == expected


@pytest.mark.parametrize("bad", [-1, 1.5, "8", True, 10**9])
def test_bad_token_count_is_a_typed_error(bad: object) -> None:
    with pytest.raises(TokenCountError):
        ladder(synthetic_table(), None, bad)  # type: ignore[arg-type]
