"""Small hand-made tables for tests."""

from __future__ import annotations

from controller.knobs import Knobs
from controller.params import BuildParams
from controller.stats import ConfigStats
from controller.table import GLOBAL_SCOPE, Scope, Table
from controller.table_file import make_table


def stats(tier: str, k: int, n: int, acc: float, lat: float, samples: int = 10) -> ConfigStats:
    return ConfigStats(Knobs(tier, k, n), samples, acc, lat, 0.1, 1.0)


def table_of(configs: list[ConfigStats], tolerance: float = 0.05, **per_dataset: list[ConfigStats]) -> Table:
    scopes = {GLOBAL_SCOPE: Scope(GLOBAL_SCOPE, sorted(per_dataset), configs)}
    scopes.update({name: Scope(name, [name], cs) for name, cs in per_dataset.items()})
    return make_table(scopes, BuildParams(tolerance=tolerance), {"test": True})


def grid(seed_acc: float = 0.4) -> list[ConfigStats]:
    """A realistic 27-config grid: latency and accuracy grow with tier, top_k and blocks."""
    out = []
    for t, tier in enumerate(("low", "medium", "high")):
        for k in (4, 6, 8):
            for n in (12, 14, 16):
                lat = 80 + 35 * t + 2.5 * k + 1.5 * n
                acc = seed_acc + 0.12 * t + 0.015 * k + 0.01 * (n - 12)
                out.append(stats(tier, k, n, round(acc, 4), lat))
    return out
