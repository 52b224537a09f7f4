"""An evaluation as JSON (NaN becomes null) and as readable text tables."""

from __future__ import annotations

import math
from dataclasses import asdict
from typing import Any

from controller.evaluate.results import BudgetRow, ConfigOutcome, EvaluationResult, ScopeEvaluation, StrategyResult
from controller.knobs import Knobs
from controller.table import GLOBAL_SCOPE


def _num(x: float) -> float | None:
    return None if math.isnan(x) else x


def _outcome(o: ConfigOutcome | None) -> dict[str, Any] | None:
    if o is None:
        return None
    return {**o.knobs.as_dict(), "num_test_samples": o.num_test_samples, "accuracy": _num(o.accuracy),
            "latency_ms": _num(o.latency_ms), "violation_rate": _num(o.violation_rate),
            "effective_accuracy": _num(o.effective_accuracy)}


def _row(r: BudgetRow) -> dict[str, Any]:
    return {"budget_ms": r.budget_ms, "chosen": _outcome(r.chosen), "chosen_feasible": r.chosen_feasible,
            "oracle": _outcome(r.oracle), "oracle_feasible": r.oracle_feasible, "regret": _num(r.regret),
            "full": _outcome(r.full), "fastest": _outcome(r.fastest)}


def _scope(s: ScopeEvaluation) -> dict[str, Any]:
    averages: dict[str, Any] = {k: _num(v) for k, v in asdict(s.averages).items()}
    averages["attainment"] = _num(s.averages.attainment)
    return {"scope": s.scope, "num_test_samples": s.num_test_samples, "averages": averages,
            "rows": [_row(r) for r in s.rows]}


def to_json(result: EvaluationResult) -> dict[str, Any]:
    sp = result.split
    return {
        "split": {"test_fraction": sp.test_fraction, "seed": sp.seed, "build_samples": len(sp.build),
                  "test_samples": len(sp.test), "build_questions": sp.build_questions,
                  "test_questions": sp.test_questions, "position_split_datasets": list(sp.position_datasets)},
        "budgets_ms": list(result.budgets),
        "notes": list(result.notes),
        "strategies": [
            {"name": s.strategy.name, "build": s.strategy.params.model_dump(),
              "table_version": s.table.version_id,
             "scopes": [_scope(sc) for sc in s.scopes]}
            for s in result.strategies
        ],
    }


def _k(knobs: Knobs) -> str:
    return f"{knobs.tier}/{knobs.top_k}/{knobs.num_active_blocks}"


def _f(x: float, width: int = 7, digits: int = 3) -> str:
    return f"{'-':>{width}}" if math.isnan(x) else f"{x:>{width}.{digits}f}"


def _trio(o: ConfigOutcome | None) -> str:
    if o is None:
        return f"{'-':>7}{'-':>7}{'-':>7}"
    return _f(o.accuracy) + _f(o.violation_rate) + _f(o.effective_accuracy)


def detail_lines(s: StrategyResult, scope: ScopeEvaluation) -> list[str]:
    b = s.strategy.params
    quantile = f" p{b.latency_quantile * 100:g}" if b.latency_quantile else ""
    lines = [f"strategy {s.strategy.name} (aggregation={b.aggregation_method}, latency={b.latency_metric}"
             f"{quantile}, tolerance={b.tolerance:g}), scope {scope.scope}: "
             f"{scope.num_test_samples} test samples",
             f"{'budget':>7} {'chosen':<12}{'acc':>7}{'viol':>7}{'eff':>7} {'oracle':<12}{'acc':>7}"
             f"{'regret':>8} |{'full acc':>8}{'viol':>7}{'eff':>7} | "
             f"{'fastest':<11}{'acc':>7}{'viol':>7}{'eff':>7}"]
    for r in scope.rows:
        flag = "*" if not r.chosen_feasible else " "
        lines.append(f"{r.budget_ms:>6g}{flag} {_k(r.chosen.knobs):<12}{_trio(r.chosen)} "
                     f"{_k(r.oracle.knobs):<12}{_f(r.oracle.accuracy)}{_f(r.regret, 8)} |"
                     f"{_trio(r.full):>22} | "
                     f"{_k(r.fastest.knobs):<11}{_trio(r.fastest)}")
    if any(not r.chosen_feasible for r in scope.rows):
        lines.append("  * below every config: the fastest config is chosen, its violations count")
    return lines


def compare_lines(result: EvaluationResult, scope: str = GLOBAL_SCOPE) -> list[str]:
    """Budgets down, strategies across: accuracy, attainment, effective accuracy."""
    strategies = [s for s in result.strategies if any(sc.scope == scope for sc in s.scopes)]
    head = f"{'budget':>7}" + "".join(f" | {s.strategy.name + ' acc':>10}{'attain':>7}{'eff':>7}"
                                      for s in strategies)
    lines = [f"compare, scope {scope} (acc = test accuracy, attain = share on time, eff = late counts wrong)",
             head]
    for i, budget in enumerate(result.budgets):
        cells = ""
        for s in strategies:
            r = s.scope(scope).rows[i]
            o = r.chosen
            cells += f" | {_f(o.accuracy, 10)}{_f(1 - o.violation_rate)}{_f(o.effective_accuracy)}"
        lines.append(f"{budget:>7g}{cells}")
    return lines


def averages_lines(result: EvaluationResult, scope: str = GLOBAL_SCOPE) -> list[str]:
    lines = [f"averages over {len(result.budgets)} budgets, scope {scope}",
             f"{'strategy':<16}{'accuracy':>9}{'attain':>8}{'eff_acc':>9}{'regret':>8}{'oracle':>8}"]
    baseline = None
    for s in result.strategies:
        if not any(sc.scope == scope for sc in s.scopes):
            continue
        a = s.scope(scope).averages
        baseline = baseline or a
        lines.append(f"{s.strategy.name:<16}{_f(a.accuracy, 9)}{_f(a.attainment, 8)}"
                     f"{_f(a.effective_accuracy, 9)}{_f(a.regret, 8)}{_f(a.oracle_accuracy, 8)}")
    if baseline is not None:
        b = baseline
        lines.append(f"{'full high/8/16':<16}{_f(b.full_accuracy, 9)}{_f(1 - b.full_violation_rate, 8)}"
                     f"{_f(b.full_effective_accuracy, 9)}")
        lines.append(f"{'fastest':<16}{_f(b.fastest_accuracy, 9)}{_f(1 - b.fastest_violation_rate, 8)}"
                     f"{_f(b.fastest_effective_accuracy, 9)}")
    return lines


def text_lines(result: EvaluationResult, *, details: bool = True) -> list[str]:
    """The split, its notes, then per scope: per-budget rows (details only) and the averages."""
    sp = result.split
    lines = [f"split: {sp.build_questions} build / {sp.test_questions} test questions "
             f"({len(sp.build)} / {len(sp.test)} samples), test_fraction={sp.test_fraction}, seed={sp.seed}"]
    lines += [f"note: {n}" for n in result.notes]
    scopes = [sc.scope for sc in result.strategies[0].scopes]
    for scope in scopes:
        if details:
            for s in result.strategies:
                lines += ["", *detail_lines(s, s.scope(scope))]
        if details and len(result.strategies) > 1:  # the comparison is per budget too
            lines += ["", *compare_lines(result, scope)]
        lines += ["", *averages_lines(result, scope)]
    return lines
