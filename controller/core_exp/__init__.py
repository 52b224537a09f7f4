"""The core_exp profiling-results format (docs/core-exp-format.md), one concern a module: records
(extraction and drop rules), parse (one file), discover (folders), load (a results folder), cache
(parsed files), write (the profiler's writer), synthetic (generated sample results)."""

from controller.core_exp.discover import discover_datasets
from controller.core_exp.load import LoadReport, LoadResult, load_samples
from controller.core_exp.records import records_to_samples
from controller.core_exp.write import write_config_file

__all__ = ["LoadReport", "LoadResult", "discover_datasets", "load_samples", "records_to_samples", "write_config_file"]
