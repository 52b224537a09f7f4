"""Find result files: dataset folders, rank files, top-level JSONL."""

from __future__ import annotations

import re
from pathlib import Path

from controller.core_exp.parse import parse_file
from controller.datasets import normalize_dataset_name
from controller.errors import DataLoadError

RESULT_SUFFIXES: tuple[str, ...] = (".json", ".jsonl")
RANK_FILE_RE = re.compile(r"^(?P<base>.+)_rank(?P<rank>\d+)\.json$")
_CONFIG_NAME_MARK = "_imgsizetier-"
_HEAD_BYTES = 256 * 1024


def _looks_like_result(path: Path) -> bool:
    if path.suffix == ".json" and _CONFIG_NAME_MARK in path.name:
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(_HEAD_BYTES)
    except OSError:
        return False
    if path.suffix == ".json":
        return b'"per_sample_results"' in head
    first = next((ln for ln in head.split(b"\n") if ln.strip()), b"")
    return b'"accuracy"' in first


def result_files(folder: Path) -> list[Path]:
    try:
        entries = sorted(folder.iterdir())
    except OSError:
        return []
    return [p for p in entries if p.suffix in RESULT_SUFFIXES and p.is_file()]


def dataset_folders(results_dir: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for sub in sorted(p for p in results_dir.iterdir() if p.is_dir()):
        if any(_looks_like_result(f) for f in result_files(sub)):
            found.setdefault(normalize_dataset_name(sub.name), sub)
    return found


def top_level_jsonl(results_dir: Path) -> list[Path]:
    return sorted(p for p in results_dir.glob("*.jsonl") if p.is_file())


LAYOUT = (
    "expected RESULTS_DIR/<dataset folder, e.g. text-vqa>/<dataset>_imgsizetier-<tier>_crops<n>_topk<k>_blocks<n>.json "
    "(docs/core-exp-format.md; `lookupctl sample-data --out DIR` writes an example)"
)


def layout_hint(results_dir: Path) -> str:
    """What to pass instead, for a folder in which no dataset folder was found."""
    if any(_looks_like_result(p) for p in result_files(results_dir) if p.suffix == ".json"):
        # The commonest slip: one dataset's folder instead of the folder holding the datasets.
        return (f"it holds result files itself, so it looks like one dataset folder: pass its parent "
                f"{results_dir.resolve().parent} instead; {LAYOUT}")
    return LAYOUT


def check_results_dir(results_dir: str | Path) -> Path:
    root = Path(results_dir)
    if not root.exists():
        raise DataLoadError(
            str(root), "results directory does not exist; pass the folder holding the dataset folders"
        )
    if not root.is_dir():
        raise DataLoadError(str(root), "is not a directory; pass the folder holding the dataset folders")
    return root


def discover_datasets(results_dir: str | Path) -> list[str]:
    """Normalized names of the datasets present: folders holding result files, plus top-level JSONL."""
    root = check_results_dir(results_dir)
    names = set(dataset_folders(root))
    for p in top_level_jsonl(root):
        entry = parse_file(p, None, p.read_bytes())
        names.update(entry.meta["datasets"])
    return sorted(names)


