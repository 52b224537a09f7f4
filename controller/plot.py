"""Frontier plot: every config's accuracy against latency, the frontier drawn as a step line."""

from __future__ import annotations

from pathlib import Path

from controller.optional import require
from controller.table import Table


def plot_frontier(table: Table, path: str | Path, scope: str = "global") -> Path:
    mpl = require("matplotlib", "plot")
    mpl.use("Agg")  # files only: never needs a display
    plt = require("matplotlib.pyplot", "plot")
    s = table.scope(scope)
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    markers = {"low": "o", "medium": "s", "high": "^"}
    for tier, marker in markers.items():
        cs = [c for c in s.configs if c.knobs.tier == tier]
        ax.scatter([c.latency_ms for c in cs], [c.accuracy for c in cs], marker=marker, alpha=0.6,
                   label=f"tier {tier}")
    f = s.frontier.entries
    ax.step([c.latency_ms for c in f], [c.accuracy for c in f], where="post", color="black", lw=1.5,
            label="frontier")
    for c in f:
        ax.annotate(f"{c.knobs.top_k}/{c.knobs.num_active_blocks}", (c.latency_ms, c.accuracy), fontsize=7,
                    xytext=(3, -9), textcoords="offset points")
    metric = table.build.latency_metric + (f" p{table.build.latency_quantile * 100:g}"
                                           if table.build.latency_quantile else f" {table.build.aggregation_method}")
    ax.set_xlabel(f"latency ({metric}), ms")
    ax.set_ylabel(f"accuracy ({table.build.aggregation_method})")
    ax.set_title(f"{scope} scope, table {table.version_id}  (labels: top_k/blocks)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, bbox_inches="tight")
    plt.close(fig)
    return out
