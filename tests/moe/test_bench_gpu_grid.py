"""The interleaved knob-effect benchmark runs end to end on the tiny preset (CPU, real torch)."""

from __future__ import annotations

import json
from pathlib import Path

from bench.bench_gpu_grid import main


def test_grid_bench_on_tiny_preset(tmp_path: Path, capsys) -> None:
    out = tmp_path / "grid.json"
    assert main(["--rounds", "2", "--tiers", "low", "high", "--top_k", "1", "2", "--blocks", "2", "4",
                 "--new_tokens", "2", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert len(result["rows"]) == 8
    assert all(r["vision_prefill_p50"] > 0 for r in result["rows"])
    eff = result["effects"]
    assert set(eff) == {"top_k", "num_active_blocks", "tier", "fastest_vs_full"}
    assert eff["top_k"]["2"]["prefill"] == 1.0  # the reference value compares with itself
    assert "| tier | top_k |" in capsys.readouterr().out
