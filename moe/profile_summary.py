"""Markdown summary of a profiled results folder: per-config median/p95 of each stage."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from controller.knobs import tier_index

STAGES = (("vision", "T_vision_total"), ("prefill", "T_LLM_prefill"), ("total", "T_total"))


def _configs(folder: Path) -> list[dict[str, Any]]:
    rows = []
    for path in sorted(folder.glob("*/*.json")):
        data = json.loads(path.read_text())
        recs = data["per_sample_results"]
        row: dict[str, Any] = {k: data[k] for k in ("tier", "top_k", "num_active_blocks", "selected_crops_mean")}
        for name, key in STAGES:
            v = np.array([r[key] for r in recs], dtype=float)
            row[f"{name}_p50"], row[f"{name}_p95"] = np.percentile(v, 50), np.percentile(v, 95)
        pre = np.array([r["T_vision_total"] + r["T_LLM_prefill"] for r in recs], dtype=float)
        row["vp_p50"] = np.percentile(pre, 50)
        row["n"] = len(recs)
        rows.append(row)
    rows.sort(key=lambda r: (tier_index(r["tier"]), r["top_k"], r["num_active_blocks"]))
    return rows


def summarize(results_dir: str | Path) -> str:
    rows = _configs(Path(results_dir))
    head = (
        "| tier | crops mean | top_k | blocks | n | vision p50 | vision p95 | prefill p50 | prefill p95 "
        "| total p50 | total p95 | vision+prefill p50 | speedup vs full (same tier) |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    full = {
        r["tier"]: r["vp_p50"]
        for r in rows
        if r["top_k"] == max(x["top_k"] for x in rows)
        and r["num_active_blocks"] == max(x["num_active_blocks"] for x in rows)
    }
    lines = []
    for r in rows:
        speed = full.get(r["tier"], float("nan")) / r["vp_p50"]
        lines.append(
            f"| {r['tier']} | {r['selected_crops_mean']:.1f} | {r['top_k']} | {r['num_active_blocks']} | {r['n']} "
            + " ".join(f"| {r[f'{s}_{q}']:.1f}" for s, _ in STAGES for q in ("p50", "p95"))
            + f" | {r['vp_p50']:.1f} | {speed:.2f}x |"
        )
    return head + "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(summarize(sys.argv[1]))
