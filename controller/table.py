"""The lookup table: per-scope config statistics and frontiers, resolving budgets to decisions."""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from controller.budget import thresholds
from controller.datasets import normalize_dataset_name
from controller.decision import Decision
from controller.errors import BuildError
from controller.frontier import Frontier
from controller.knobs import Knobs
from controller.params import BuildParams
from controller.stats import ConfigStats
from controller.validate import validate_budget, validate_budgets, validate_tolerance

GLOBAL_SCOPE = "global"
_INF = math.inf
# tuple.__new__ skips the NamedTuple's Python-level __new__ (same object, less overhead).
_new_decision = tuple.__new__


class Scope:
    """One table of configs: all datasets pooled ("global", as the seed) or one dataset."""

    __slots__ = ("name", "datasets", "configs", "frontier")

    def __init__(self, name: str, datasets: Sequence[str], configs: Sequence[ConfigStats]) -> None:
        self.name = name
        self.datasets = tuple(datasets)
        self.configs = tuple(sorted(configs, key=lambda c: c.knobs.sort_key))
        self.frontier = Frontier(self.configs)


@dataclass(frozen=True)
class BatchResolution:
    """Vectorised answers: frontier entry per budget (entry 0 where infeasible) and feasibility."""

    scope: Scope
    entry_index: npt.NDArray[np.intp]
    feasible: npt.NDArray[np.bool_]

    def latency_ms(self) -> npt.NDArray[np.float64]:
        return self.scope.frontier.latency_array[self.entry_index]


@dataclass(frozen=True)
class Table:
    version_id: str
    created_at: str
    build: BuildParams
    source: dict[str, Any]
    scope_map: dict[str, Scope]
    sha256: str = ""
    # Set by the file loader: where the table came from (for status pages), not part of the content.
    origin: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        assert GLOBAL_SCOPE in self.scope_map, "a table always has the global scope"
        # Hot-path shortcuts for resolve(): plain attributes are cheaper than method calls.
        object.__setattr__(self, "_global", self.scope_map[GLOBAL_SCOPE])
        object.__setattr__(self, "_tolerance", self.build.tolerance)

    # --- construction and files: controller.table_file registers the codec at import ---------------
    @classmethod
    def load(cls, path: str | Path) -> Table:
        return _codec().load(path)

    @classmethod
    def from_json_bytes(cls, data: bytes, source: str = "<bytes>") -> Table:
        return _codec().from_bytes(data, source)

    def to_json_bytes(self) -> bytes:
        return _codec().to_bytes(self)

    def to_json_dict(self) -> dict[str, Any]:
        return _codec().to_dict(self)

    def save(self, path: str | Path) -> Path:
        return _codec().save(self, path)

    def with_version(self, version_id: str) -> Table:
        return _codec().restamp(self, version_id)

    def without_configs(self, keys: Iterable[str]) -> Table:
        """This table minus the configs named by `keys` (Knobs.key), frontiers rebuilt, for a model
        that cannot run them (e.g. a failed graph capture): resolve() never picks them. The version
        id stays, so decisions still name their version; the sha256 is the new content's, and
        source["excluded_configs"] lists what went. BuildError if a scope would be left empty."""
        drop = set(keys) & {k.key for k in self.all_knobs()}
        if not drop:
            return self
        scopes = {}
        for name, scope in self.scope_map.items():
            kept = [c for c in scope.configs if c.knobs.key not in drop]
            if not kept:
                raise BuildError(f"excluding {sorted(drop)} leaves scope {name!r} of table {self.version_id} empty")
            scopes[name] = Scope(name, scope.datasets, kept)
        source = dict(self.source, excluded_configs=sorted(drop | set(self.source.get("excluded_configs", []))))
        table = Table(self.version_id, self.created_at, self.build, source, scopes, "", self.origin)
        return _codec().restamp(table, self.version_id)

    # --- queries -----------------------------------------------------------------------------------
    @property
    def scopes(self) -> tuple[str, ...]:
        return (GLOBAL_SCOPE, *sorted(n for n in self.scope_map if n != GLOBAL_SCOPE))

    @property
    def tolerance(self) -> float:
        return self.build.tolerance

    def scope(self, dataset: str | None = None) -> Scope:
        """The dataset's own scope; the global one for None or a dataset the table does not have."""
        if dataset is None:
            return self.scope_map[GLOBAL_SCOPE]
        found = self.scope_map.get(dataset)
        if found is None:
            found = self.scope_map.get(normalize_dataset_name(dataset), self.scope_map[GLOBAL_SCOPE])
        return found

    def configs(self, scope: str = GLOBAL_SCOPE) -> list[ConfigStats]:
        return list(self.scope(scope).configs)

    def frontier(self, scope: str = GLOBAL_SCOPE) -> list[ConfigStats]:
        return list(self.scope(scope).frontier.entries)

    def all_knobs(self) -> list[Knobs]:
        seen = {c.knobs for s in self.scope_map.values() for c in s.configs}
        return sorted(seen, key=lambda k: k.sort_key)

    # --- the decision rule -------------------------------------------------------------------------
    def resolve(self, budget_ms: Any, *, tolerance: Any = None, dataset: str | None = None) -> Decision:
        """Highest expected accuracy with latency <= budget * (1 + tolerance); else the fastest
        config, flagged infeasible. O(log n) over the scope's frontier."""
        # Everything inlined: this runs on every request (benchmark goal: well under 1.5 us).
        if type(budget_ms) is float and 0.0 < budget_ms < _INF:
            budget = budget_ms
        else:
            budget = validate_budget(budget_ms)
        tol = self._tolerance if tolerance is None else validate_tolerance(tolerance)  # type: ignore[attr-defined]
        scope: Scope = self._global if dataset is None else self.scope(dataset)  # type: ignore[attr-defined]
        frontier = scope.frontier
        # controller.budget.threshold, inlined: the call would add about 35 ns (~8%) to every resolve.
        # tests/controller/test_budget.py holds this copy to Budget.fits, ties included.
        i = bisect_right(frontier.latencies, budget * (1 + tol)) - 1
        c = frontier.entries[i if i >= 0 else 0]
        return _new_decision(Decision, (c.knobs, c.accuracy, c.latency_ms, i >= 0, scope.name, self.version_id,
                                        budget, tol, c))

    def resolve_array(self, budgets_ms: Any, *, tolerance: Any = None,
                      dataset: str | None = None) -> BatchResolution:
        """Vectorised resolve with numpy searchsorted: no Python object per budget."""
        budgets = validate_budgets(budgets_ms)
        tol = self.build.tolerance if tolerance is None else validate_tolerance(tolerance)
        scope = self.scope(dataset)
        idx = scope.frontier.indices(thresholds(budgets, tol))
        feasible = idx >= 0
        return BatchResolution(scope, np.maximum(idx, 0), feasible)

    def resolve_many(self, budgets_ms: Any, *, tolerance: Any = None,
                     dataset: str | None = None) -> list[Decision]:
        budgets = validate_budgets(budgets_ms)
        tol = self.build.tolerance if tolerance is None else validate_tolerance(tolerance)
        batch = self.resolve_array(budgets, tolerance=tol, dataset=dataset)
        entries, name, version = batch.scope.frontier.entries, batch.scope.name, self.version_id
        out = []
        for b, i, ok in zip(budgets.tolist(), batch.entry_index.tolist(), batch.feasible.tolist()):
            c = entries[i]
            out.append(Decision(c.knobs, c.accuracy, c.latency_ms, ok, name, version, b, tol, c))
        return out

    # --- reporting ---------------------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        """JSON-able description for status pages and `lookupctl inspect --json`."""
        return {
            "version_id": self.version_id,
            "sha256": self.sha256,
            "created_at": self.created_at,
            "origin": self.origin,
            "build": self.build.model_dump(),
            "source": self.source,
            "scopes": {
                name: {
                    "datasets": list(s.datasets),
                    "num_configs": len(s.configs),
                    "frontier": [c.to_record() for c in s.frontier.entries],
                }
                for name, s in ((n, self.scope_map[n]) for n in self.scopes)
            },
        }



class TableCodec(Protocol):
    """The file format, implemented by controller.table_file (which imports this module, never the
    reverse): Table's load/save methods delegate here so that callers keep `Table.load(path)`."""

    def load(self, path: str | Path) -> Table: ...
    def from_bytes(self, data: bytes, source: str) -> Table: ...
    def to_bytes(self, table: Table) -> bytes: ...
    def to_dict(self, table: Table) -> dict[str, Any]: ...
    def save(self, table: Table, path: str | Path) -> Path: ...
    def restamp(self, table: Table, version_id: str) -> Table: ...


_registered: list[TableCodec] = []


def register_codec(codec: TableCodec) -> None:
    """Called once by controller.table_file at import (`import controller` always imports it)."""
    _registered[:] = [codec]


def _codec() -> TableCodec:
    if not _registered:  # only reachable by importing controller.table without the package __init__
        raise RuntimeError("controller.table_file is not imported; import controller first")
    return _registered[0]
