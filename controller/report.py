"""Human-readable text for a table: summary lines and a frontier table (used by the CLI)."""

from __future__ import annotations

from controller.stats import ConfigStats
from controller.table import Table


def table_summary_lines(table: Table) -> list[str]:
    b = table.build
    configs = table.configs()
    lat = [c.latency_ms for c in configs]
    acc = [c.accuracy for c in configs]
    metric = b.latency_metric + (f", p{b.latency_quantile * 100:g}" if b.latency_quantile else "")
    lines = [
        f"table {table.version_id}  sha256 {table.sha256[:12]}",
        f"  build: aggregation={b.aggregation_method} tolerance={b.tolerance:g} latency={metric} "
        f"min_samples={b.min_samples}",
        f"  configs: {len(configs)}  frontier: {len(table.frontier())}  scopes: {', '.join(table.scopes)}",
        f"  latency: {min(lat):.1f}-{max(lat):.1f} ms  accuracy: {min(acc):.4f}-{max(acc):.4f}",
    ]
    dropped = table.source.get("dropped_at_build") or {}
    if dropped:
        lines.append("  dropped at build: " + ", ".join(f"{k}={v}" for k, v in sorted(dropped.items())))
    excluded = table.source.get("excluded_configs") or []
    if excluded:
        lines.append(f"  excluded (fewer than min_samples): {len(excluded)} config(s) across scopes")
    recal = table.source.get("recalibration") or {}
    for key, items in recal.items():
        if items:
            shown = ", ".join(f"{i['scope']}:{i['tier']}_{i['top_k']}_{i['num_active_blocks']}" for i in items[:6])
            lines.append(f"  {key.replace('_', ' ')}: {len(items)} ({shown}{', ...' if len(items) > 6 else ''})")
    return lines


def config_rows(configs: list[ConfigStats]) -> list[str]:
    head = f"{'tier':<7}{'top_k':>6}{'blocks':>7}{'accuracy':>10}{'latency_ms':>12}{'p95_ms':>9}{'samples':>9}"
    rows = [head]
    for c in configs:
        p95 = f"{c.latency_p95:.1f}" if c.latency_p95 is not None else "-"
        rows.append(f"{c.knobs.tier:<7}{c.knobs.top_k:>6}{c.knobs.num_active_blocks:>7}{c.accuracy:>10.4f}"
                    f"{c.latency_ms:>12.2f}{p95:>9}{c.num_samples:>9}")
    return rows
