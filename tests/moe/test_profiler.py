"""The profiler writes core_exp files that the loader reads back; it resumes; hooks score."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from controller.core_exp.load import load_samples
from controller.errors import KnobError
from controller.knobs import Knobs
from lookupctl import main
from moe.profiler import NO_ACCURACY, Grid, profile_grid
from moe.prompts import ProfileSample, read_samples_jsonl, synthetic_samples

GRID = Grid(("low", "medium"), (4, 8), (12, 16))


def test_profile_writes_core_exp_files_and_resumes(runner, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    report = profile_grid(
        runner,
        dataset="text_vqa",
        grid=GRID,
        samples=synthetic_samples(2),
        out_dir=tmp_path,
        max_new_tokens=3,
        warmup=1,
        progress=False,
    )
    assert len(report.written) == 8 and not report.skipped
    files = sorted((tmp_path / "text-vqa").glob("*.json"))
    assert len(files) == 8
    data = json.loads(files[0].read_text())
    assert data["accuracy_source"] == NO_ACCURACY and data["accuracy"] == 0.0
    assert data["num_total_blocks"] == 16 and data["profiler"]["backend"] == "torch"
    for key in ("T_vision_total", "T_LLM_prefill", "T_total"):
        assert f"{key}_p95" in data["latency_stats"]
    rec = data["per_sample_results"][0]
    for key in ("T_vision_total", "T_LLM_prefill", "T_LLM_decode", "T_total"):
        assert math.isfinite(rec[key]) and rec[key] > 0
    assert len(rec["T_decode_per_step"]) == rec["output_tokens"] - 1
    name = files[0].name
    assert name.startswith("text-vqa_imgsizetier-") and "_topk" in name and name.endswith(".json")
    small = json.loads((tmp_path / "text-vqa" / next(p.name for p in files if "blocks12" in p.name)).read_text())
    assert small["active_block_indices"] == [0, 1, 3, 5, 6, 7, 8, 9, 11, 12, 14, 15]
    for path in files:  # what each file records is what the runner skipped for its knobs
        data = json.loads(path.read_text())
        knobs = Knobs(data["tier"], data["top_k"], data["num_active_blocks"])
        skipped = runner.forward_knobs(knobs).skip_blocks
        assert data["active_block_indices"] == [b for b in range(16) if b not in skipped]

    loaded = load_samples(tmp_path, use_cache=False, progress=False)
    assert loaded.report.samples_kept == 16

    again = profile_grid(
        runner, dataset="text_vqa", grid=GRID, samples=synthetic_samples(2), out_dir=tmp_path, progress=False
    )
    assert not again.written and len(again.skipped) == 8


def test_eval_hook_and_jsonl(runner, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "q1", "answers": ["a"], "num_crops": 20}\n\n{"prompt": "q2"}\n')
    samples = read_samples_jsonl(prompts)
    assert [s.prompt for s in samples] == ["q1", "q2"] and samples[0].answers == ("a",)

    def always_half(pred: str, sample: ProfileSample) -> float:
        return 0.5

    profile_grid(
        runner,
        dataset="okvqa",
        grid=Grid(("high",), (8,), (16,)),
        samples=samples,
        out_dir=tmp_path / "r",
        max_new_tokens=2,
        warmup=0,
        hook=always_half,
        hook_name="t:always_half",
        progress=False,
    )
    (f,) = (tmp_path / "r" / "okvqa").glob("*.json")
    data = json.loads(f.read_text())
    assert data["accuracy"] == 0.5 and data["accuracy_source"] == "eval hook t:always_half"
    assert data["per_sample_results"][0]["actual_num_crops"] == 15  # the tier caps num_crops


def test_out_of_range_grid_fails_before_profiling(runner, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(KnobError, match=r"top_k=17 .*1\.\.16"):
        profile_grid(
            runner,
            dataset="d",
            grid=Grid(("low",), (17,), (16,)),
            samples=synthetic_samples(1),
            out_dir=tmp_path,
            progress=False,
        )
    assert not any(tmp_path.iterdir())


def test_cli_profile(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    common = [
        "--dataset",
        "coco_2014_vqa",
        "--tiers",
        "low",
        "--top-k",
        "4",
        "--top_k",
        "8",
        "--blocks",
        "16",
        "--samples",
        "1",
        "--max_new_tokens",
        "2",
        "--warmup",
        "0",
        "--out",
        str(tmp_path),
        "--no-progress",
        "--device",
        "cpu",
    ]
    assert main(["profile", "--backend", "torch", "--preset", "tiny", *common]) == 0
    assert len(list((tmp_path / "coco-2014-vqa").glob("*_topk8_blocks16.json"))) == 1
    assert main(["profile", "--checkpoint", str(tmp_path / "missing"), *common]) == 2
    assert "checkpoint=" in capsys.readouterr().err


def test_interleaved_rounds_visit_every_config_per_sample(runner, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]

    calls: list[tuple[Knobs, str]] = []
    real = runner.generate

    def spy(knobs, inputs, **kw):  # type: ignore[no-untyped-def]
        calls.append((knobs, inputs[0].prompt))
        return real(knobs, inputs, **kw)

    runner.generate = spy
    grid = Grid(("low", "high"), (2, 4), (16,))
    samples = synthetic_samples(3)
    try:
        profile_grid(runner, dataset="d", grid=grid, samples=samples, out_dir=tmp_path, warmup=1,
                     max_new_tokens=2, progress=False)
    finally:
        del runner.generate
    configs = set(grid.configs())
    timed = calls[-len(configs) * len(samples):]  # after warm-ups: rounds of every config
    for r, sample in enumerate(samples):
        round_calls = timed[r * len(configs):(r + 1) * len(configs)]
        assert {k for k, _ in round_calls} == configs
        assert {p for _, p in round_calls} == {sample.prompt}
    files = sorted((tmp_path / "d").glob("*.json"))
    assert len(files) == 4
    for f in files:
        data = json.loads(f.read_text())
        assert data["profiler"]["order"] == "interleaved"
        assert [r["metadata"]["question_id"] for r in data["per_sample_results"]] == \
            [s.question_id for s in samples]


def test_sequential_order_still_available(runner, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    profile_grid(runner, dataset="d", grid=Grid(("low",), (2,), (16,)), samples=synthetic_samples(2),
                 out_dir=tmp_path, warmup=0, max_new_tokens=2, progress=False, interleave=False)
    (f,) = (tmp_path / "d").glob("*.json")
    assert json.loads(f.read_text())["profiler"]["order"] == "sequential"
