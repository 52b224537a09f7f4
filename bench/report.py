"""docs/BENCHMARKS.latest.md from the results of every benchmark in one run.

Each benchmark module exposes `run(quick: bool) -> dict` returning this shape (JSON-able):

    {
      "title": str,                      # one line: what is measured
      "figures": [                       # one row each in the doc
        {
          "name": str,                   # e.g. "single resolve (median of rounds)"
          "value": float | int | str,    # measured in this run
          "unit": str,                   # "us", "ms", "x", "M budgets/s", "" ...
          "baseline": float | int | str | None,  # the comparison point, measured in the SAME run
          "baseline_name": str,          # what the baseline is, e.g. "seed-style linear scan, same run"
          "goal": str,                   # the target it is held to, e.g. "<= 1.5 us"; "" if informational
          "passed": bool | None          # None: informational, no goal
        }, ...
      ],
      "notes": [str, ...]                # optional: setup, data, caveats (e.g. SYNTHETIC data)
    }

A result without "figures" is still written (as a key/value table) and flagged as not following
the shape; a module without `run`, a missing module, an exception or a timeout is reported as such.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

FIGURE_KEYS = ("name", "value", "unit", "baseline", "baseline_name", "goal", "passed")


@dataclass
class Outcome:
    """One benchmark's run: `result` on success, else `status` says what went wrong."""

    module: str
    status: str  # "ok", "missing", "no run()", "failed", "timed out"
    elapsed_s: float
    result: dict[str, Any] | None = None
    detail: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def passed_count(self) -> tuple[int, int]:
        figures = (self.result or {}).get("figures") or []
        judged = [f for f in figures if isinstance(f, dict) and f.get("passed") is not None]
        return sum(1 for f in judged if f.get("passed")), len(judged)


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_facts() -> dict[str, str]:
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count() or 0
    return {
        "cores (usable / total)": f"{usable} / {os.cpu_count()}",
        "CPU model": _cpu_model(),
        "OS": f"{platform.system()} {platform.release()}",
        "Python": platform.python_version(),
        "numpy": _version("numpy"),
        "Ray": _version("ray"),
        "torch": _version("torch"),
    }


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e6 else f"{v:,.0f}"
    return str(v).replace("|", "\\|").replace("\n", " ")


def _verdict(passed: Any) -> str:
    return "info" if passed is None else ("PASS" if passed else "**FAIL**")


def _figure_rows(figures: list[Any]) -> list[str]:
    rows = ["| figure | measured | baseline (same run) | goal | result |", "| --- | --- | --- | --- | --- |"]
    for f in figures:
        if not isinstance(f, dict):
            rows.append(f"| {_cell(f)} | | | | not a figure dict |")
            continue
        unit = f" {f['unit']}" if f.get("unit") else ""
        base = "-" if f.get("baseline") is None else f"{_cell(f['baseline'])}{unit}"
        if f.get("baseline_name"):
            base += f" ({_cell(f['baseline_name'])})"
        rows.append(f"| {_cell(f.get('name'))} | {_cell(f.get('value'))}{unit} | {base} | "
                    f"{_cell(f.get('goal') or '-')} | {_verdict(f.get('passed'))} |")
    return rows


def _section(o: Outcome) -> list[str]:
    r = o.result or {}
    title = r.get("title") if isinstance(r.get("title"), str) else ""
    lines = [f"## `{o.module}`{f': {title}' if title else ''}", "",
             f"Status: {o.status}, {o.elapsed_s:.1f} s."]
    if o.detail:
        lines += ["", "```", o.detail.strip()[-2000:], "```"]
    if o.result is not None:
        figures = r.get("figures")
        if isinstance(figures, list):
            lines += ["", *_figure_rows(figures)]
        else:
            lines += ["", "Result does not follow the figures shape of bench/report.py; raw values:", "",
                      "| key | value |", "| --- | --- |"]
            lines += [f"| {_cell(k)} | {_cell(v)} |" for k, v in r.items() if k != "notes"]
        notes = r.get("notes") or []
        if notes:
            lines += ["", *(f"- {_cell(n)}" for n in notes)]
    return [*lines, ""]


def render(outcomes: list[Outcome], *, generated_at: str, quick: bool, total_s: float,
           machine: dict[str, str] | None = None) -> str:
    machine = machine if machine is not None else machine_facts()
    lines = ["# Benchmarks", "",
             f"Generated by `make bench` (`python -m bench.run_all{' --quick' if quick else ''}`) at {generated_at}, "
             f"{total_s:.0f} s in all. Every baseline is measured in the same run as its figure. "
             "Do not edit by hand: rerun the command.", "",
             "## Machine", "", "| | |", "| --- | --- |"]
    lines += [f"| {k} | {_cell(v)} |" for k, v in machine.items()]
    lines += ["", "## Summary", "", "| benchmark | status | time (s) | goals met |", "| --- | --- | --- | --- |"]
    for o in outcomes:
        ok, judged = o.passed_count()
        met = f"{ok} / {judged}" if o.result is not None and judged else "-"
        lines.append(f"| `{o.module}` | {o.status} | {o.elapsed_s:.1f} | {met} |")
    lines.append("")
    for o in outcomes:
        lines += _section(o)
    return "\n".join(lines)


def cli_main(run: Any, doc: str | None) -> None:
    """`python -m bench.bench_x [--quick]`: run one benchmark and print its figures."""
    import argparse

    parser = argparse.ArgumentParser(description=doc)
    parser.add_argument("--quick", action="store_true")
    result = run(parser.parse_args().quick)
    print(result["title"])
    for f in result["figures"]:
        mark = {True: "PASS", False: "FAIL", None: "info"}[f["passed"]]
        base = f"  baseline {f['baseline']} ({f['baseline_name']})" if f.get("baseline") is not None else ""
        print(f"  {f['name']:<44} {f['value']} {f['unit']}{base}  goal {f['goal'] or '-'}  {mark}")
    for note in result.get("notes", []):
        print(f"  note: {note}")
