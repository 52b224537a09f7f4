"""Evaluation plot: test accuracy and violation rate against budget, one line per strategy."""

from __future__ import annotations

from pathlib import Path

from controller.evaluate.results import EvaluationResult
from controller.optional import require
from controller.table import GLOBAL_SCOPE


def plot_evaluation(result: EvaluationResult, path: str | Path, scope: str = GLOBAL_SCOPE) -> Path:
    mpl = require("matplotlib", "plot")
    mpl.use("Agg")  # files only: never needs a display
    plt = require("matplotlib.pyplot", "plot")
    fig, (ax_acc, ax_viol) = plt.subplots(1, 2, figsize=(11, 4.5), dpi=110)
    budgets = list(result.budgets)
    for s in result.strategies:
        rows = s.scope(scope).rows
        line = ax_acc.plot(budgets, [r.chosen.accuracy for r in rows], marker="o", ms=3,
                           label=f"{s.strategy.name}")[0]
        ax_acc.plot(budgets, [r.chosen.effective_accuracy for r in rows], ls=":", color=line.get_color(),
                    label=f"{s.strategy.name} effective")
        ax_acc.plot(budgets, [r.oracle.accuracy for r in rows], ls="--", lw=0.8, color=line.get_color(),
                    label=f"{s.strategy.name} oracle")
        ax_viol.plot(budgets, [r.chosen.violation_rate for r in rows], marker="o", ms=3,
                     color=line.get_color(), label=s.strategy.name)
    rows = result.strategies[0].scope(scope).rows
    baselines = (("full high/8/16", [r.full for r in rows], "black"),
                 ("fastest", [r.fastest for r in rows], "grey"))
    for name, outs, color in baselines:
        acc = [o.accuracy if o is not None else float("nan") for o in outs]
        viol = [o.violation_rate if o is not None else float("nan") for o in outs]
        ax_acc.plot(budgets, acc, color=color, lw=1, label=name)
        ax_viol.plot(budgets, viol, color=color, lw=1, label=name)
    ax_acc.set_ylabel("test accuracy")
    ax_viol.set_ylabel("violation rate (latency > budget)")
    for ax in (ax_acc, ax_viol):
        ax.set_xlabel("budget, ms")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"held-out evaluation, scope {scope} (test fraction {result.split.test_fraction})",
                 fontsize=9)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, bbox_inches="tight")
    plt.close(fig)
    return out
