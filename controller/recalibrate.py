"""A new table version from live latency: accuracy from the current table, latency from what served
requests took (per config, when it has enough live samples), and the drift test that triggers it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from controller.knobs import Knobs
from controller.live_latency import ConfigLive
from controller.live_sketch import LatencySketch
from controller.params import BuildParams
from controller.stats import ConfigStats
from controller.table import GLOBAL_SCOPE, Scope, Table
from controller.table_file import make_table


def _latency_sketch(live: ConfigLive, build: BuildParams) -> LatencySketch:
    # The table's latency metric decides which live figure replaces it.
    return live.total if build.latency_metric == "total" else live.first_token


def _figure(s: LatencySketch, build: BuildParams) -> float | None:
    """The live counterpart of ConfigStats.latency_ms under the table's build parameters."""
    if build.latency_quantile is not None:
        return s.quantile(build.latency_quantile)
    if build.aggregation_method == "mean":
        return s.mean()
    return s.quantile(0.5)  # median, and max_accuracy (one sample's latency has no live counterpart)


def live_stats(c: ConfigStats, live: ConfigLive, build: BuildParams) -> ConfigStats:
    s = _latency_sketch(live, build)
    latency = _figure(s, build)
    assert latency is not None, "called only for configs with live samples"
    decode_sketch: LatencySketch = live.decode_per_token
    decode = _figure(decode_sketch, build) if decode_sketch.count else c.decode_ms_per_token
    return replace(
        c,
        latency_ms=max(latency, 1e-6),  # a table latency must be > 0
        latency_std=s.std() or 0.0,
        latency_mean=s.mean(),
        latency_median=s.quantile(0.5),
        latency_min=s.low,
        latency_max=s.high,
        latency_p90=s.quantile(0.9),
        latency_p95=s.quantile(0.95),
        latency_p99=s.quantile(0.99),
        decode_ms_per_token=decode if decode and decode > 0 else c.decode_ms_per_token,
    )


def recalibrate(table: Table, live: Mapping[Knobs, ConfigLive], *, min_samples: int,
                window: Mapping[str, Any], trigger: str = "manual",
                notes: Mapping[str, Any] | None = None) -> Table:
    """Every scope's configs with >= min_samples live samples take their latency from `live`; the
    others keep the profiled latency. `source` records the window and the samples per config."""
    recalibrated = sorted((k for k, v in live.items() if v.count >= min_samples), key=lambda k: k.sort_key)
    chosen = set(recalibrated)
    scopes = {
        name: Scope(name, scope.datasets,
                    [live_stats(c, live[c.knobs], table.build) if c.knobs in chosen else c for c in scope.configs])
        for name, scope in table.scope_map.items()
    }
    kept = [c.knobs.key for c in table.scope(GLOBAL_SCOPE).configs if c.knobs not in chosen]
    # One level of history: the profile's own source stays, an earlier recalibration's record goes.
    source = {k: v for k, v in table.source.items() if k != "live_recalibration"}
    source["live_recalibration"] = {
        "from_version": table.version_id,
        "trigger": trigger,
        "window": dict(window),
        "min_samples": min_samples,
        "samples_per_config": {k.key: live[k].count for k in sorted(live, key=lambda k: k.sort_key)},
        "recalibrated": [k.key for k in recalibrated],
        "kept_profiled": kept,
        **(notes or {}),
    }
    return make_table(scopes, table.build, source)


def drift(table: Table, live: Mapping[Knobs, ConfigLive], *, min_samples: int) -> dict[str, float]:
    """Per config with enough samples: live p95 / table p95 - 1 (the table's p95, else its latency),
    on the metric the table was built with."""
    out: dict[str, float] = {}
    for c in table.scope(GLOBAL_SCOPE).configs:
        v = live.get(c.knobs)
        if v is None or v.count < min_samples:
            continue
        p95 = _latency_sketch(v, table.build).quantile(0.95)
        ref = c.latency_p95 if c.latency_p95 is not None else c.latency_ms
        if p95 is not None and ref > 0:
            out[c.knobs.key] = p95 / ref - 1
    return out
