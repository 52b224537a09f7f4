"""Dataset names: one normal form (`coco_2014_vqa`) for tables and loading, one folder form
(`coco-2014-vqa`) for core_exp folders and file names."""

from __future__ import annotations

from typing import TYPE_CHECKING

from controller.errors import UnknownDatasetError

if TYPE_CHECKING:  # the table module imports this one
    from controller.table import Table

GLOBAL = "global"  # controller.table.GLOBAL_SCOPE, which cannot be imported from here


def normalize_dataset_name(name: str) -> str:
    """`coco-2014-vqa`, ` COCO_2014_VQA ` and `coco_2014_vqa` all name the dataset `coco_2014_vqa`."""
    return name.strip().lower().replace("-", "_")


def dataset_folder(name: str) -> str:
    """`coco_2014_vqa` -> `coco-2014-vqa`: the per-dataset folder and the task part of file names."""
    return normalize_dataset_name(name).replace("_", "-")


def known_datasets(table: Table) -> list[str]:
    """What a request may name: every per-dataset scope of `table`, and every dataset pooled in
    one of its scopes (answered from that pool)."""
    names = {n for n in table.scope_map if n != GLOBAL}
    names.update(normalize_dataset_name(d) for s in table.scope_map.values() for d in s.datasets)
    return sorted(names)


def check_dataset(table: Table, dataset: str | None) -> None:
    """UnknownDatasetError, naming the datasets `table` knows, for one it knows nothing about:
    answering it from the global scope would hide a typo or a dataset that was never profiled."""
    if dataset is None or dataset in table.scope_map:  # the common case, no allocation
        return
    known = known_datasets(table)
    if normalize_dataset_name(dataset) not in known:
        raise UnknownDatasetError(dataset, known)
