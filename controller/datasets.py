"""Dataset names: one normal form (`coco_2014_vqa`) for tables and loading, one folder form
(`coco-2014-vqa`) for core_exp folders and file names."""

from __future__ import annotations


def normalize_dataset_name(name: str) -> str:
    """`coco-2014-vqa`, ` COCO_2014_VQA ` and `coco_2014_vqa` all name the dataset `coco_2014_vqa`."""
    return name.strip().lower().replace("-", "_")


def dataset_folder(name: str) -> str:
    """`coco_2014_vqa` -> `coco-2014-vqa`: the per-dataset folder and the task part of file names."""
    return normalize_dataset_name(name).replace("_", "-")
