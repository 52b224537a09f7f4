"""The reference design's public API (names, arguments, return keys), backed by the new table.

Existing code written against `experiments.controller.lookup_table_baseline` and
`lookup_table_wrapper` keeps working with `from controller import ...`."""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from controller.budget import Budget
from controller.build import build_table, build_table_from_results
from controller.core_exp.records import records_to_samples
from controller.decision import Decision
from controller.errors import ControllerError
from controller.params import make_build_params
from controller.table import Table
from controller.table_file import atomic_write

log = logging.getLogger(__name__)

# The reference precomputed best configs on a 5 ms budget grid; kept for `lookup_table` and statistics.
_REFERENCE_BUDGET_STEP_MS = 5.0


class LookupTableBaselineController:
    """Given a latency budget, the (tier, top_k, num_active_blocks) config that meets it with the
    highest expected accuracy."""

    def __init__(self, profiling_results: list[dict[str, Any]], aggregation_method: str = "mean",
                 tolerance: float = 0.05, use_prefill_only: bool = True, **build_options: Any) -> None:
        samples, dropped = records_to_samples(profiling_results)
        params = make_build_params(aggregation_method=aggregation_method, tolerance=tolerance,
                             latency_metric="prefill" if use_prefill_only else "total", **build_options)
        self._init_from_table(build_table(samples, params, source={"records": len(profiling_results),
                                                                    "dropped": dropped}),
                              profiling_results)

    def _init_from_table(self, table: Table, profiling_results: list[dict[str, Any]] | None = None) -> None:
        self.table = table
        self.aggregation_method = table.build.aggregation_method
        self.tolerance = table.build.tolerance
        self.use_prefill_only = table.build.latency_metric == "prefill"
        self.profiling_results: list[dict[str, Any]] = profiling_results or []
        # predict() answers from a per-(scope, config) template dict: one copy and three stores per
        # call instead of Decision.to_dict() (the reference API's cost stays within 2x resolve).
        self._templates: dict[str, dict[int, dict[str, Any]]] = {}
        self._resolve = table.resolve
        latencies = [c.latency_ms for c in table.configs()]
        self.min_latency = float(min(latencies))
        self.max_latency = float(max(latencies))

    @classmethod
    def from_table(cls, table: Table) -> LookupTableBaselineController:
        controller = cls.__new__(cls)
        controller._init_from_table(table)
        return controller

    @property
    def config_table(self) -> dict[tuple[str, int, int], dict[str, Any]]:
        return {(c.knobs.tier, c.knobs.top_k, c.knobs.num_active_blocks): c.reference_dict()
                for c in self.table.configs()}

    @property
    def lookup_table(self) -> dict[float, dict[str, Any]]:
        """The reference's precomputed budget grid (min..max latency every 5 ms) -> best config."""
        grid = np.arange(self.min_latency, self.max_latency + _REFERENCE_BUDGET_STEP_MS, _REFERENCE_BUDGET_STEP_MS)
        out = {}
        for budget, decision in zip(grid.tolist(), self.table.resolve_many(grid, tolerance=self.tolerance)):
            if decision.feasible:
                d = decision.to_dict()
                out[float(budget)] = {k: d[k] for k in ("tier", "top_k", "num_active_blocks", "accuracy",
                                                         "latency", "num_samples")}
        return out

    def predict(self, latency_budget: float, return_all_candidates: bool = False,
                dataset: str | None = None, tolerance: float | None = None) -> Any:
        """The best config dict; with return_all_candidates, every feasible config sorted by accuracy
        (best first). When none is feasible: the fastest config with 'feasible': False."""
        # self.tolerance is the table's own: passing it would re-validate it on every call.
        if tolerance is None and dataset is None:
            decision = self._resolve(latency_budget)
        else:
            decision = self._resolve(latency_budget, tolerance=tolerance, dataset=dataset)
        _, _, _, feasible, scope, _, budget, tol, stats = decision
        if not feasible:
            log.warning("No config satisfies budget %.2fms (fastest: %.2fms); using %s",
                        decision.budget_ms, decision.expected_latency_ms, decision.knobs.key)
            return decision.to_dict()
        if return_all_candidates:
            return self._candidates(decision)
        try:
            out = self._templates[scope][id(stats)].copy()
        except KeyError:
            out = self._template(decision).copy()
        out["budget_ms"] = budget
        out["tolerance"] = tol
        return out

    def _template(self, decision: Decision) -> dict[str, Any]:
        # A feasible answer's dict. Keyed by the config object's id: the table, and so every
        # ConfigStats in it, lives as long as self.
        template = decision.to_dict()
        self._templates.setdefault(decision.scope, {})[id(decision.stats)] = template
        return template

    def _candidates(self, decision: Decision) -> list[dict[str, Any]]:
        budget = Budget(decision.budget_ms, decision.tolerance)
        feasible = [c for c in self.table.configs(decision.scope) if budget.fits(c.latency_ms)]
        feasible.sort(key=lambda c: (-c.accuracy, c.latency_ms, c.knobs.sort_key))
        base = decision.to_dict()
        return [{**base, **c.knobs.as_dict(), **c.reference_dict()} for c in feasible]

    def get_statistics(self) -> dict[str, Any]:
        configs = self.table.configs()
        acc = np.array([c.accuracy for c in configs])
        lat = np.array([c.latency_ms for c in configs])
        return {
            "num_configs": len(configs),
            "num_lookup_entries": len(self.lookup_table),
            "latency_range": {"min": self.min_latency, "max": self.max_latency},
            "accuracy_range": {"min": float(acc.min()), "max": float(acc.max()), "mean": float(acc.mean())},
            "latency_stats": {"mean": float(lat.mean()), "std": float(lat.std())},
            "config_distribution": {
                "tiers": dict(Counter(c.knobs.tier for c in configs)),
                "top_k": dict(Counter(c.knobs.top_k for c in configs)),
                "num_active_blocks": dict(Counter(c.knobs.num_active_blocks for c in configs)),
            },
            "frontier_size": len(self.table.frontier()),
            "scopes": list(self.table.scopes),
            "table_version": self.table.version_id,
        }

    def save(self, output_file: str | Path) -> None:
        self.table.save(output_file)
        log.info("Lookup table saved to %s", output_file)

    def to_reference_dict(self) -> dict[str, Any]:
        """The reference implementation's own file layout, which its `load()` reads: config_table keyed
        "tier_topk_blocks", the 5 ms lookup_table grid, statistics and metadata. Global scope only
        (the reference has no per-dataset tables)."""
        return {
            "config_table": {f"{t}_{k}_{n}": info for (t, k, n), info in self.config_table.items()},
            "lookup_table": {str(b): entry for b, entry in self.lookup_table.items()},
            "statistics": self.get_statistics(),
            "metadata": {
                "aggregation_method": self.aggregation_method,
                "tolerance": self.tolerance,
                "use_prefill_only": self.use_prefill_only,
                "num_profiling_results": sum(c.num_samples for c in self.table.configs()),
                "exported_from": {"table_version": self.table.version_id, "sha256": self.table.sha256},
            },
        }

    @classmethod
    def load(cls, lookup_file: str | Path) -> LookupTableBaselineController:
        """Reads this project's table files and the reference implementation's own JSON."""
        return cls.from_table(Table.load(lookup_file))


def save_reference_format(table: Table, path: str | Path) -> Path:
    """Write `table` in the reference implementation's JSON layout (`lookupctl export --format
    reference`); this project reads that layout back too (Table.load)."""
    data = json.dumps(LookupTableBaselineController.from_table(table).to_reference_dict(), indent=2,
                      allow_nan=False)
    out = Path(path)
    atomic_write(out, data.encode() + b"\n")
    return out


def build_lookup_table_from_core_exp(results_dir: str | Path, dataset_names: list[str] | None = None,
                                     output_file: str | Path | None = None, aggregation_method: str = "mean",
                                     tolerance: float = 0.05, use_prefill_only: bool = True,
                                     **options: Any) -> LookupTableBaselineController:
    """options: latency_quantile, min_samples (build) and strict, cache_dir, use_cache, progress,
    latency_from (loading)."""
    build_keys = {"latency_quantile", "min_samples"}
    params = make_build_params(aggregation_method=aggregation_method, tolerance=tolerance,
                         latency_metric="prefill" if use_prefill_only else "total",
                         **{k: v for k, v in options.items() if k in build_keys})
    result = build_table_from_results(results_dir, params, datasets=dataset_names,
                                      **{k: v for k, v in options.items() if k not in build_keys})
    controller = LookupTableBaselineController.from_table(result.table)
    if output_file:
        controller.save(output_file)
    return controller


class LookupTableControllerWrapper:
    """The reference wrapper's interface (drop-in for the GRPO controller); needs no torch."""

    def __init__(self, lookup_table_controller: LookupTableBaselineController) -> None:
        self.controller = lookup_table_controller
        self.device = "cpu"

    def forward_stage1(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return {}  # the table needs no features: kept for interface compatibility

    def forward_stage2(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return {}

    def predict(self, latency_budget: float, return_all_candidates: bool = False) -> Any:
        return self.controller.predict(latency_budget, return_all_candidates=return_all_candidates)

    def predict_stage1(self, latency_budget: float) -> dict[str, Any]:
        return {"tier": self.controller.predict(latency_budget)["tier"]}

    def predict_stage2(self, latency_budget: float) -> dict[str, Any]:
        config = self.controller.predict(latency_budget)
        return {"top_k": config["top_k"], "num_active_blocks": config["num_active_blocks"]}

    def predict_all(self, latency_budget: float) -> dict[str, Any]:
        result: dict[str, Any] = self.controller.predict(latency_budget)
        return result

    def get_statistics(self) -> dict[str, Any]:
        return self.controller.get_statistics()

    def to(self, device: str) -> LookupTableControllerWrapper:
        self.device = device
        return self

    def eval(self) -> LookupTableControllerWrapper:
        return self


def create_lookup_table_controller(lookup_table_path: str | Path | None = None,
                                   results_dir: str | Path | None = None,
                                   dataset_names: list[str] | None = None, aggregation_method: str = "mean",
                                   tolerance: float = 0.05, **options: Any) -> LookupTableControllerWrapper:
    if lookup_table_path:
        controller = LookupTableBaselineController.load(lookup_table_path)
    elif results_dir:
        controller = build_lookup_table_from_core_exp(results_dir, dataset_names,
                                                      aggregation_method=aggregation_method,
                                                      tolerance=tolerance, **options)
    else:
        raise ControllerError("create_lookup_table_controller needs lookup_table_path or results_dir")
    return LookupTableControllerWrapper(controller)
