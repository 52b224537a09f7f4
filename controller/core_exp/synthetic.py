"""SYNTHETIC core_exp profiling results: seeded, realistic magnitudes, optional real-world quirks."""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from controller.core_exp.write import (
    KNOB_RECORD_KEYS,
    build_config_result,
    config_filename,
    sample_record,
    write_config_file,
    write_json_atomic,
)
from controller.datasets import dataset_folder
from controller.errors import ControllerError, UnknownDatasetError
from controller.knobs import TIER_CROP_RANGE, Knobs, tier_index

Rng = np.random.Generator
WORLD_SIZE = 2  # ranks the synthetic "run" used; sample_id is the index within a rank
BASE_GRID = (("low", "medium", "high"), (4, 6, 8), (12, 14, 16))
EXTENDED_TOP_KS, EXTENDED_BLOCKS = (5, 7), (13, 15)
# Accuracy lost when dropping 0..4 blocks (relative), as measured for MolmoE's drop order.
_BLOCK_LOSS = (0.0, 0.031, 0.054, 0.075, 0.184)
_WORDS = (
    "yes no 2 3 4 1 red blue white black green dog cat tennis pizza baseball train stop kitchen "
    "skateboarding surfing frisbee umbrella giraffe elephant motorcycle bathroom wood snow grass "
    "sunny night table bus pepperoni broccoli horse clock laptop starbucks coca-cola nike 12:30 "
    "toyota samsung heineken chocolate"
).split()
QUIRK_SLOTS = (
    "zero_latency_samples",
    "nan_accuracy_samples",
    "nan_latency_samples",
    "leftover_rank_files",
    "rank_only_configs",
    "truncated_files",
    "old_layout_files",
)
_SAMPLE_QUIRK_COUNT = {"zero_latency_samples": 3, "nan_accuracy_samples": 2, "nan_latency_samples": 2}


@dataclass(frozen=True)
class _Dataset:
    best_accuracy: float  # at high tier, top_k 8, 16 blocks
    tier_quality: tuple[float, float, float]  # relative to the high tier
    vqa_metric: bool  # VQA score from 10 answers, else exact match
    question_id_base: int


DATASETS: dict[str, _Dataset] = {
    "coco_2014_vqa": _Dataset(0.83, (0.87, 0.96, 1.0), True, 262_148_000),
    "text_vqa": _Dataset(0.76, (0.76, 0.92, 1.0), True, 34_602),
    "okvqa": _Dataset(0.68, (0.90, 0.97, 1.0), True, 2_971_475),
    "science_qa_img": _Dataset(0.72, (0.93, 0.98, 1.0), False, 10_000),
    "st_qa": _Dataset(0.70, (0.70, 0.90, 1.0), False, 20_000),
    "doc_qa": _Dataset(0.74, (0.60, 0.88, 1.0), False, 30_000),
    "tally_qa": _Dataset(0.72, (0.85, 0.95, 1.0), False, 40_000),
    "coco_caption": _Dataset(0.62, (0.90, 0.97, 1.0), False, 50_000),
}


@dataclass(frozen=True)
class SampleDataSummary:
    """What `generate_sample_results` wrote. The data is SYNTHETIC, never a measurement."""

    out_dir: Path
    datasets: tuple[str, ...]
    files_written: int  # every file, quirk files included
    samples: int  # per-sample records recoverable from valid result files (rank files counted once)
    quirks_added: dict[str, int] = field(default_factory=dict)
    synthetic: bool = True

    def describe(self) -> str:
        quirks = ", ".join(f"{k}={v}" for k, v in self.quirks_added.items()) or "none"
        return (
            f"SYNTHETIC sample results (generated, not measured) in {self.out_dir}: "
            f"{len(self.datasets)} datasets ({', '.join(self.datasets)}), {self.files_written} files, "
            f"{self.samples} samples; quirks: {quirks}"
        )


def knob_grid(
    tiers: Sequence[str], top_ks: Sequence[int], blocks: Sequence[int], extended_grid: bool = False
) -> list[Knobs]:
    """The profiled configs; the extended grid adds top_k {5, 7} x blocks {13, 15} for every tier."""
    grid = {Knobs(t, k, n) for t in tiers for k in top_ks for n in blocks}
    if extended_grid:
        grid |= {Knobs(t, k, n) for t in tiers for k in EXTENDED_TOP_KS for n in EXTENDED_BLOCKS}
    return sorted(grid, key=lambda kn: kn.sort_key)


def config_accuracy(dataset: str, knobs: Knobs) -> float:
    """Expected accuracy of a config: rises with tier, top_k and blocks, with diminishing returns."""
    prof = DATASETS[dataset]
    k_quality = 1.0 - 0.15 * (max(0.0, 8 - knobs.top_k) / 4) ** 1.6
    dropped = max(0, 16 - knobs.num_active_blocks)
    b_loss = _BLOCK_LOSS[dropped] if dropped < len(_BLOCK_LOSS) else 0.184 + 0.12 * (dropped - 4)
    q = prof.tier_quality[tier_index(knobs.tier)] * max(k_quality, 0.3) * max(1.0 - b_loss, 0.2)
    return float(prof.best_accuracy * q)


def _rng(seed: int, *parts: int) -> Rng:
    return np.random.default_rng([seed, *parts])


def _crc(text: str) -> int:
    return zlib.crc32(text.encode())


@dataclass(frozen=True)
class _Questions:
    """The dataset's questions, shared by every config so held-out splits by question id make sense."""

    order: np.ndarray[Any, np.dtype[np.int64]]  # question index at each record position
    sample_id: np.ndarray[Any, np.dtype[np.int64]]
    rows: list[dict[str, Any]]
    difficulty: np.ndarray[Any, np.dtype[np.float64]]  # quantile in [0, 1): higher is harder
    crop_u: np.ndarray[Any, np.dtype[np.float64]]
    consistency_u: np.ndarray[Any, np.dtype[np.float64]]
    partial_u: np.ndarray[Any, np.dtype[np.float64]]
    a: float  # mean score of a correct answer
    b: float  # mean score of a wrong answer (partial credit)


def _questions(dataset: str, n: int, seed: int) -> _Questions:
    prof, rng = DATASETS[dataset], _rng(seed, _crc(dataset), 0)
    rows: list[dict[str, Any]] = []
    ids = prof.question_id_base + np.cumsum(rng.integers(1, 40, n))
    for i in range(n):
        words = rng.choice(len(_WORDS), 4, replace=False)
        major, second, wrong, filler = (_WORDS[int(w)] for w in words)
        m_major = int(rng.choice([3, 4, 5, 6, 7, 8, 9, 10], p=[0.05, 0.1, 0.1, 0.15, 0.15, 0.15, 0.15, 0.15]))
        m_second = min(int(rng.integers(1, 4)), 10 - m_major)
        answers = [major] * m_major + [second] * m_second + [filler] * (10 - m_major - m_second)
        if not prof.vqa_metric:
            answers, m_second = [major], 0
        w, h = (int(v) for v in rng.integers(320, 1281, 2))
        rows.append(
            {
                "question_id": int(ids[i]),
                "image_id": int(rng.integers(1, 581_929)),
                "answers": [str(a) for a in answers],
                "major": major,
                "second": second,
                "wrong": wrong,
                "score_major": 1.0 if m_major >= 4 or not prof.vqa_metric else 0.9,
                "score_second": (0.0, 0.3, 0.6, 0.9)[m_second],
                "image_size": [w, h],
                "text_tokens": int(rng.integers(18, 64)),
                "pad_frac": float(rng.uniform(0.0, 0.06)),
            }
        )
    partial_u = rng.random(n)
    partial = np.array([r["score_second"] for r in rows]) * (partial_u < 0.35)
    order = np.concatenate([np.arange(r, n, WORLD_SIZE) for r in range(WORLD_SIZE)])
    sample_id = np.concatenate([np.arange(len(range(r, n, WORLD_SIZE))) for r in range(WORLD_SIZE)])
    return _Questions(
        order=order,
        sample_id=sample_id,
        rows=rows,
        difficulty=(rng.permutation(n) + rng.random(n)) / n,  # stratified: config means hit their target
        crop_u=rng.random(n),
        consistency_u=rng.random(n),
        partial_u=partial_u,
        a=float(np.mean([r["score_major"] for r in rows])),
        b=float(np.mean(partial)),
    )


def _tiling(tier: str, crop_u: float, width: int, height: int) -> tuple[int, int]:
    """(rows, cols) with rows*cols in the tier's crop range, close to the image's aspect ratio."""
    lo, hi = TIER_CROP_RANGE[tier]
    target = lo + crop_u**0.6 * (hi - lo)
    aspect = math.log(width / height)
    options = [(r, c) for r in range(1, hi + 1) for c in range(1, hi + 1) if lo <= r * c <= hi]
    return min(
        options, key=lambda rc: abs(rc[0] * rc[1] - target) + 2 * abs(math.log(rc[1] / rc[0]) - aspect)
    )


def _config_records(
    dataset: str, knobs: Knobs, qs: _Questions, seed: int, max_decode_steps: int | None
) -> list[dict[str, Any]]:
    rng = _rng(seed, _crc(dataset), 1 + tier_index(knobs.tier), knobs.top_k, knobs.num_active_blocks)
    n, k, depth = len(qs.rows), knobs.top_k / 8, knobs.num_active_blocks / 16
    p_correct = np.clip((config_accuracy(dataset, knobs) - qs.b) / (qs.a - qs.b), 0.0, 1.0)
    # Mostly the same questions fail in every config; some answers flip from config to config.
    rank = np.where(rng.random(n) < 0.85, qs.difficulty, rng.random(n))
    correct = rank < p_correct
    noise = rng.lognormal(0.0, 0.07, n) * np.where(rng.random(n) < 0.004, rng.uniform(1.5, 3.4, n), 1.0)
    step_noise = rng.lognormal(0.0, 0.05, (n, 12))
    overhead = rng.uniform(1.0, 3.0, n)
    records = []
    for qi, sid in zip(qs.order.tolist(), qs.sample_id.tolist(), strict=True):
        row = qs.rows[qi]
        rows_, cols = _tiling(knobs.tier, float(qs.crop_u[qi]), *row["image_size"])
        crops = rows_ * cols
        vis_tokens = int(round((crops + 1) * 144 * (1.0 - row["pad_frac"])))
        seq = vis_tokens + row["text_tokens"]
        t_vision = (4.0 + 2.8 * (crops + 1)) * noise[qi]
        t_prefill = (54.0 + depth * (28.0 + 18.0 * k + seq * (0.008 + 0.010 * k))) * noise[qi]
        if correct[qi]:
            pred, score = row["major"], row["score_major"]
        elif qs.partial_u[qi] < 0.35 and row["score_second"] > 0:
            pred, score = row["second"], row["score_second"]
        else:
            pred, score = row["wrong"], 0.0
        content = 1 + len(pred) // 4
        per_token = 8.0 + depth * (19.0 + 15.0 * k)
        steps = [
            per_token * (1.12 if i == 0 else 1.0) * float(step_noise[qi, i % 12]) for i in range(content + 1)
        ]
        t_decode = sum(steps)
        kept = steps if max_decode_steps is None else steps[:max_decode_steps]
        records.append(
            sample_record(
                sample_id=int(sid),
                tier=knobs.tier,
                top_k=knobs.top_k,
                num_active_blocks=knobs.num_active_blocks,
                accuracy=score,
                T_vision_total=round(float(t_vision), 3),
                T_LLM_prefill=round(float(t_prefill), 3),
                T_LLM_decode=round(t_decode, 3),
                T_total=round(float(t_vision + t_prefill + t_decode + overhead[qi]), 3),
                T_decode_per_token=round(t_decode / (content + 1), 3),
                T_decode_per_step=[[round(s, 3)] for s in kept],
                output_tokens=content + 1,
                content_tokens=content,
                ends_with_eos=True,
                actual_num_crops=crops,
                actual_tiling=[rows_, cols],
                actual_image_size=row["image_size"],
                actual_vision_tokens=vis_tokens,
                actual_text_tokens=row["text_tokens"],
                pred=pred,
                question_id=row["question_id"],
                answers=row["answers"],
                image_id=row["image_id"],
            )
        )
    return records


def _apply_sample_quirk(records: list[dict[str, Any]], reason: str, rng: Rng) -> None:
    for i in rng.choice(len(records), _SAMPLE_QUIRK_COUNT[reason], replace=False).tolist():
        rec = records[i]
        if reason == "nan_accuracy_samples":
            rec["accuracy"] = math.nan
        elif reason == "nan_latency_samples":
            rec.update(T_vision_total=math.nan, T_LLM_prefill=math.nan, T_total=math.nan)
        else:  # failed timing: every time is 0
            for key in ("T_vision_total", "T_LLM_prefill", "T_LLM_decode", "T_total", "T_decode_per_token"):
                rec[key] = 0.0
            rec["T_decode_per_step"] = [[0.0] for _ in rec["T_decode_per_step"]]


def _write_quirk_file(
    out: Path, dataset: str, knobs: Knobs, records: list[dict[str, Any]], reason: str
) -> int:
    """Write the config's file(s) the quirky way; return how many files were written."""
    kw: dict[str, Any] = dict(knobs.as_dict(), per_sample_results=records)
    if reason in ("leftover_rank_files", "rank_only_configs"):
        n = 0
        if reason == "leftover_rank_files":
            write_config_file(out, dataset, **kw)
            n += 1
        for r in range(WORLD_SIZE):
            part = records[r * len(records) // WORLD_SIZE : (r + 1) * len(records) // WORLD_SIZE]
            write_config_file(out, dataset, **dict(kw, per_sample_results=part), rank=r)
        return n + WORLD_SIZE
    result = build_config_result(**kw)
    path = (
        out
        / dataset_folder(dataset)
        / config_filename(
            dataset, knobs.tier, result["selected_crops_mean"], knobs.top_k, knobs.num_active_blocks
        )
    )
    if reason == "truncated_files":  # a crashed run: the writer died mid-file
        write_json_atomic(path, result)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) * 2 // 5])
        return 1
    summary = {
        key: result[key]
        for key in (
            "tier",
            "top_k",
            "num_active_blocks",
            "num_samples",
            "accuracy",
            "accuracy_std",
            "latency_stats",
        )
    }
    old_records = [{k: v for k, v in rec.items() if k not in KNOB_RECORD_KEYS} for rec in records]
    write_json_atomic(path, {"summary": [summary], "per_sample_results": old_records})
    return 1


def _check_int(name: str, value: int, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ControllerError(f"{name}={value!r} is not valid; expected an integer >= {minimum}")


def generate_sample_results(
    out_dir: str | Path,
    *,
    datasets: Sequence[str] = ("coco_2014_vqa", "text_vqa", "okvqa"),
    tiers: Sequence[str] = ("low", "medium", "high"),
    top_ks: Sequence[int] = (4, 6, 8),
    blocks: Sequence[int] = (12, 14, 16),
    extended_grid: bool = False,
    samples_per_config: int = 200,
    seed: int = 0,
    quirks: bool = False,
    max_decode_steps: int | None = None,
) -> SampleDataSummary:
    """Write SYNTHETIC core_exp results under `out_dir`; same arguments give byte-identical files.

    `max_decode_steps` keeps only the first positions of `T_decode_per_step` (smaller files; the
    decode totals still cover every step).
    """
    _check_int("samples_per_config", samples_per_config, 3 if quirks else 1)
    _check_int("seed", seed, 0)
    if max_decode_steps is not None:
        _check_int("max_decode_steps", max_decode_steps, 0)
    for name in datasets:
        if name not in DATASETS:
            raise UnknownDatasetError(name, sorted(DATASETS))
    datasets = tuple(dict.fromkeys(datasets))
    if not datasets:
        raise ControllerError("datasets=() is not valid; name at least one, e.g. coco_2014_vqa")
    grid = knob_grid(tiers, top_ks, blocks, extended_grid)
    pairs = [(d, kn) for d in datasets for kn in grid]
    if quirks and len(pairs) < len(QUIRK_SLOTS):
        raise ControllerError(
            f"quirks need at least {len(QUIRK_SLOTS)} configs, got {len(pairs)}; add tiers, top_ks or blocks"
        )
    slots = {round(i * len(pairs) / len(QUIRK_SLOTS)): r for i, r in enumerate(QUIRK_SLOTS)} if quirks else {}
    out = Path(out_dir)
    files = samples = 0
    counts: dict[str, int] = {}
    question_sets = {d: _questions(d, samples_per_config, seed) for d in datasets}
    for i, (dataset, knobs) in enumerate(pairs):
        records = _config_records(dataset, knobs, question_sets[dataset], seed, max_decode_steps)
        reason = slots.get(i)
        if reason in _SAMPLE_QUIRK_COUNT:
            assert reason is not None
            _apply_sample_quirk(records, reason, _rng(seed, _crc(reason)))
            counts[reason] = _SAMPLE_QUIRK_COUNT[reason]
            reason = None
        if reason is None:
            write_config_file(out, dataset, **knobs.as_dict(), per_sample_results=records)
            files += 1
        else:
            files += _write_quirk_file(out, dataset, knobs, records, reason)
            counts[reason] = WORLD_SIZE if reason == "leftover_rank_files" else 1
        samples += 0 if reason == "truncated_files" else len(records)
    if quirks:
        log = out / "logs" / f"core_exp_{dataset_folder(datasets[0])}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text("[rank0] SYNTHETIC run log\n[rank0] Saved results for 1 config\n[rank1] CUDA error\n")
        readme = out / dataset_folder(datasets[0]) / "README.txt"
        readme.write_text("Not a result file: notes left next to SYNTHETIC results.\n")
        counts.update(log_files=1, non_result_files=1)
        files += 2
    return SampleDataSummary(out, datasets, files, samples, dict(sorted(counts.items())))
