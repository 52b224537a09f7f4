"""Latency-budget lookup controller for MoE VLM serving: a pure library (no Ray, no torch)."""

from controller.budget import Budget
from controller.build import BuildResult, build_table, build_table_from_results
from controller.decision import Decision
from controller.errors import (
    BudgetError,
    BuildError,
    ControllerError,
    DataLoadError,
    KnobError,
    StoreError,
    TableLoadError,
    ToleranceError,
    UnknownDatasetError,
)
from controller.knobs import TIERS, Knobs
from controller.params import BuildParams
from controller.reference_api import (
    LookupTableBaselineController,
    LookupTableControllerWrapper,
    build_lookup_table_from_core_exp,
    create_lookup_table_controller,
)
from controller.samples import SampleColumns
from controller.stats import ConfigStats
from controller.table import GLOBAL_SCOPE, Table
from controller.table_file import load_table

__all__ = [
    "GLOBAL_SCOPE",
    "TIERS",
    "Budget",
    "BudgetError",
    "BuildError",
    "BuildParams",
    "BuildResult",
    "ConfigStats",
    "ControllerError",
    "DataLoadError",
    "Decision",
    "KnobError",
    "Knobs",
    "LookupTableBaselineController",
    "LookupTableControllerWrapper",
    "SampleColumns",
    "StoreError",
    "Table",
    "TableLoadError",
    "ToleranceError",
    "UnknownDatasetError",
    "build_lookup_table_from_core_exp",
    "build_table",
    "build_table_from_results",
    "create_lookup_table_controller",
    "load_table",
]
