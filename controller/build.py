"""Build a lookup table from columnar samples: filter by the latency metric, aggregate per config,
globally and per dataset, drop thin configs, and optionally take latency from another profile."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from controller.aggregate import aggregate_by_config, config_codes
from controller.errors import BuildError
from controller.params import BuildParams
from controller.samples import SampleColumns
from controller.stats import ConfigStats
from controller.table import GLOBAL_SCOPE, Scope, Table
from controller.table_file import make_table


def usable_latency(samples: SampleColumns, metric: str) -> tuple[npt.NDArray[np.float64], dict[str, int]]:
    """The latency column for `metric` and a mask-free count of the samples it cannot use."""
    lat = samples["latency_prefill" if metric == "prefill" else "latency_total"].astype(np.float64)
    nonfinite = ~np.isfinite(lat)
    nonpositive = ~nonfinite & (lat <= 0)
    dropped = {k: int(v.sum()) for k, v in (("nonfinite_latency", nonfinite), ("nonpositive_latency", nonpositive))}
    return lat, {k: v for k, v in dropped.items() if v}


def valid_samples(
    samples: SampleColumns, params: BuildParams
) -> tuple[SampleColumns, npt.NDArray[np.float64], dict[str, int]]:
    lat, dropped = usable_latency(samples, params.latency_metric)
    keep = np.isfinite(lat) & (lat > 0) & np.isfinite(samples["accuracy"].astype(np.float64))
    return samples.select(keep), lat[keep], dropped


def _scope_groups(samples: SampleColumns) -> list[tuple[str, list[str], npt.NDArray[np.bool_]]]:
    all_rows = np.ones(len(samples), dtype=bool)
    groups = [(GLOBAL_SCOPE, list(samples.datasets), all_rows)]
    for i, name in enumerate(samples.datasets):
        rows = samples["dataset"] == i
        if rows.any():
            groups.append((name, [name], rows))
    return groups


def _aggregate(samples: SampleColumns, latency: npt.NDArray[np.float64], rows: npt.NDArray[np.bool_],
               params: BuildParams) -> list[ConfigStats]:
    codes = config_codes(samples["tier"][rows], samples["top_k"][rows], samples["num_active_blocks"][rows])
    return aggregate_by_config(codes, samples["accuracy"][rows].astype(np.float64), latency[rows], params,
                               samples["decode_ms_per_token"][rows].astype(np.float64))


def _recalibrate(acc_stats: list[ConfigStats], lat_stats: list[ConfigStats], scope: str,
                 report: dict[str, list[dict[str, Any]]]) -> list[ConfigStats]:
    """Accuracy from the original profile, every latency figure from the new one."""
    by_knobs = {c.knobs: c for c in lat_stats}
    out = []
    for a in acc_stats:
        lat = by_knobs.pop(a.knobs, None)
        if lat is None:
            report["missing_in_latency_source"].append({"scope": scope, **a.knobs.as_dict()})
            continue
        out.append(ConfigStats(
            knobs=a.knobs, num_samples=a.num_samples, accuracy=a.accuracy, latency_ms=lat.latency_ms,
            accuracy_std=a.accuracy_std, latency_std=lat.latency_std, accuracy_mean=a.accuracy_mean,
            accuracy_median=a.accuracy_median, latency_mean=lat.latency_mean, latency_median=lat.latency_median,
            latency_min=lat.latency_min, latency_max=lat.latency_max, latency_p90=lat.latency_p90,
            latency_p95=lat.latency_p95, latency_p99=lat.latency_p99,
            decode_ms_per_token=lat.decode_ms_per_token if lat.decode_ms_per_token is not None
            else a.decode_ms_per_token,
        ))
    for k in sorted(by_knobs, key=lambda k: k.sort_key):
        report["missing_in_accuracy_source"].append({"scope": scope, **k.as_dict()})
    return out


def build_table(samples: SampleColumns, params: BuildParams | None = None, *,
                source: dict[str, Any] | None = None, latency_from: SampleColumns | None = None) -> Table:
    """Aggregate samples into a table. `latency_from`: samples of a newer latency profile (same knobs,
    new hardware) whose latency replaces the original's; configs missing on either side are left out
    and reported in `source["recalibration"]`."""
    params = params or BuildParams()
    kept, latency, dropped = valid_samples(samples, params)
    src: dict[str, Any] = dict(source or {})
    src["dropped_at_build"] = dropped
    src["samples_used"] = int(len(kept))
    if len(kept) == 0:
        raise BuildError(f"no usable samples: {len(samples)} loaded, dropped at build {dropped or 'none'}")
    lat_stats: list[ConfigStats] = []
    recal: dict[str, list[dict[str, Any]]] = {"missing_in_latency_source": [], "missing_in_accuracy_source": []}
    if latency_from is not None:
        # Recalibration compares like with like: the latency side is pooled per config regardless of
        # dataset name, and max_accuracy (meaningless for a latency-only profile) becomes median.
        lat_params = params if params.aggregation_method != "max_accuracy" else \
            params.model_copy(update={"aggregation_method": "median"})
        lat_kept, lat_latency, lat_dropped = valid_samples(latency_from, lat_params)
        src["latency_source_dropped"] = lat_dropped
        if len(lat_kept) == 0:
            raise BuildError("the latency profile has no usable samples")
        lat_stats = _aggregate(lat_kept, lat_latency, np.ones(len(lat_kept), dtype=bool), lat_params)
    scopes: dict[str, Scope] = {}
    excluded: list[dict[str, Any]] = []
    for name, datasets, rows in _scope_groups(kept):
        stats = _aggregate(kept, latency, rows, params)
        if latency_from is not None:
            stats = _recalibrate(stats, lat_stats, name, recal)
        thin = [c for c in stats if c.num_samples < params.min_samples]
        excluded += [{"scope": name, **c.knobs.as_dict(), "num_samples": c.num_samples} for c in thin]
        stats = [c for c in stats if c.num_samples >= params.min_samples]
        if stats:
            scopes[name] = Scope(name, datasets, stats)
        elif name == GLOBAL_SCOPE:
            raise BuildError(f"no config has at least min_samples={params.min_samples} samples "
                             f"(largest has {max((c.num_samples for c in thin), default=0)})")
    src["excluded_configs"] = excluded
    if latency_from is not None:
        src["recalibration"] = recal
    return make_table(scopes, params, src)


@dataclass(frozen=True)
class BuildResult:
    table: Table
    load_report: Any  # controller.core_exp.load.LoadReport
    latency_load_report: Any = None


def build_table_from_results(results_dir: str | Path, params: BuildParams | None = None, *,
                             datasets: list[str] | None = None, strict: bool = False,
                             cache_dir: str | Path | None = None, use_cache: bool = True,
                             progress: bool | None = None,
                             latency_from: str | Path | None = None) -> BuildResult:
    from controller.core_exp.load import load_samples

    params = params or BuildParams()
    loaded = load_samples(results_dir, datasets=datasets, strict=strict, cache_dir=cache_dir,
                          use_cache=use_cache, progress=progress)
    source = {"results_dir": str(results_dir), **loaded.report.to_dict()}
    lat_loaded = None
    if latency_from is not None:
        lat_loaded = load_samples(latency_from, strict=strict, cache_dir=cache_dir, use_cache=use_cache,
                                  progress=progress)
        source["latency_from"] = {"results_dir": str(latency_from), **lat_loaded.report.to_dict()}
    table = build_table(loaded.samples, params, source=source,
                        latency_from=lat_loaded.samples if lat_loaded else None)
    return BuildResult(table, loaded.report, lat_loaded.report if lat_loaded else None)
