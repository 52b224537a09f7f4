"""Split samples into build and test sets by sample identity (one question stays on one side)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from controller.errors import EvaluationError
from controller.samples import SampleColumns


@dataclass(frozen=True)
class Split:
    build: SampleColumns
    test: SampleColumns
    test_fraction: float | None
    seed: int | None
    build_questions: int
    test_questions: int
    position_datasets: tuple[str, ...]  # split by record position: no question ids


def _identity(samples: SampleColumns) -> npt.NDArray[np.void]:
    pairs = np.empty(len(samples), dtype=[("d", np.int64), ("k", np.uint64)])
    pairs["d"], pairs["k"] = samples["dataset"], samples["sample_key"]
    return pairs


def split_by_mask(samples: SampleColumns, test: npt.NDArray[np.bool_], *,
                  test_fraction: float | None = None, seed: int | None = None) -> Split:
    """A split from a per-sample test mask; raises when a side is empty or one question is on both."""
    ident = _identity(samples)
    test_ids, build_ids = np.unique(ident[test]), np.unique(ident[~test])
    if len(np.intersect1d(test_ids, build_ids)):
        raise EvaluationError("a sample identity falls on both sides of the split")
    for side, n in (("test", len(test_ids)), ("build", len(build_ids))):
        if n == 0:
            raise EvaluationError(
                f"the {side} set is empty ({len(np.unique(ident))} distinct samples, "
                f"test_fraction={test_fraction}); each side needs at least one sample: load more samples")
    no_qid = ~samples["key_from_metadata"].astype(bool)
    pos = tuple(sorted({samples.datasets[i] for i in np.unique(samples["dataset"][no_qid])}))
    return Split(samples.select(~test), samples.select(test), test_fraction, seed,
                 len(build_ids), len(test_ids), pos)


def split_samples(samples: SampleColumns, test_fraction: float, seed: int) -> Split:
    if not (isinstance(test_fraction, (int, float)) and 0.0 < float(test_fraction) < 1.0):
        raise EvaluationError(f"test_fraction={test_fraction!r} is not valid; expected a number in (0, 1), "
                              "e.g. 0.3")
    if len(samples) == 0:
        raise EvaluationError("no samples to split")
    rng = np.random.default_rng(seed)
    ds, keys = samples["dataset"], samples["sample_key"]
    test = np.zeros(len(samples), dtype=bool)
    for d in range(len(samples.datasets)):
        rows = ds == d
        unique = np.unique(keys[rows])  # sorted: the draw depends only on the seed and the identities
        n = len(unique)
        if n == 0:
            continue
        n_test = min(max(round(test_fraction * n), 1), n - 1)
        chosen = unique[rng.permutation(n)[:n_test]]
        test[rows] = np.isin(keys[rows], chosen)
    return split_by_mask(samples, test, test_fraction=float(test_fraction), seed=seed)
