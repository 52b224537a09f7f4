"""Prompts to profile with, and the evaluation hook that scores a prediction.

JSONL, one object per line: {"prompt": str, "answers": [str, ...], "question_id": ...,
"image_id": ..., "num_crops": int}; only "prompt" is required. The hook is any callable
`(pred_text, sample) -> accuracy in [0, 1]`, named on the command line as "module:function".
"""

from __future__ import annotations

import importlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from controller.errors import ControllerError
from moe.errors import SampleFileError


@dataclass(frozen=True)
class ProfileSample:
    sample_id: int
    prompt: str
    answers: tuple[str, ...] = ()
    question_id: int | str = 0
    image_id: int | str = 0
    # None: crops are drawn from the tier's range (reproducibly, from sample_id).
    num_crops: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


AccuracyHook = Callable[[str, ProfileSample], float]


def read_samples_jsonl(path: str | Path, limit: int | None = None) -> list[ProfileSample]:
    out: list[ProfileSample] = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if limit is not None and len(out) >= limit:
                break
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise SampleFileError(str(path), n, f"not JSON ({e.msg})") from e
            if not isinstance(obj, dict) or not isinstance(obj.get("prompt"), str):
                raise SampleFileError(str(path), n, 'no "prompt" string')
            crops = obj.get("num_crops")
            if crops is not None and (not isinstance(crops, int) or crops < 1):
                raise SampleFileError(str(path), n, f"num_crops={crops!r} is not a positive integer")
            known = {"prompt", "answers", "question_id", "image_id", "num_crops"}
            out.append(
                ProfileSample(
                    sample_id=len(out),
                    prompt=obj["prompt"],
                    answers=tuple(str(a) for a in obj.get("answers", [])),
                    question_id=obj.get("question_id", len(out)),
                    image_id=obj.get("image_id", len(out)),
                    num_crops=crops,
                    extra={k: v for k, v in obj.items() if k not in known},
                )
            )
    return out


def synthetic_samples(n: int) -> list[ProfileSample]:
    """Stand-in VQA-style prompts of varied length, for latency-only profiles."""
    stems = [
        "What is shown in the image?",
        "How many people are there?",
        "What color is the car on the left?",
        "What does the sign say?",
        "Is this photo taken indoors or outdoors? Answer in one word.",
    ]
    return [ProfileSample(i, stems[i % len(stems)], question_id=i, image_id=i) for i in range(n)]


def load_hook(spec: str) -> AccuracyHook:
    """ "package.module:function" -> the callable."""
    module, sep, name = spec.partition(":")
    if not sep or not module or not name:
        raise ControllerError(f"eval_hook={spec!r} is not valid; expected 'module:function'")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ControllerError(f"eval_hook={spec!r} cannot be imported: {e}") from e
    if not callable(fn):
        raise ControllerError(f"eval_hook={spec!r} is not callable")
    return fn  # type: ignore[no-any-return]


def score(hook: AccuracyHook, pred: str, sample: ProfileSample) -> float:
    value = float(hook(pred, sample))
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise ControllerError(
            f"eval hook returned accuracy={value!r} for sample {sample.sample_id}; expected [0, 1]"
        )
    return value


def exact_match(pred: str, sample: ProfileSample) -> float:
    """A reference hook: 1.0 when the prediction equals one of the answers (case/space-insensitive)."""
    p = " ".join(pred.lower().split())
    return 1.0 if any(p == " ".join(a.lower().split()) for a in sample.answers) else 0.0
