"""Datasets: readers, session rules, the named registry and splits."""

from fusionlog.data.raw import RawFile, RawSpec
from fusionlog.data.registry import dataset_info, dataset_names, load_dataset, system_of
from fusionlog.data.splits import SplitResult, hide_labels, split_sessions

__all__ = [
    "RawFile",
    "RawSpec",
    "SplitResult",
    "dataset_info",
    "dataset_names",
    "hide_labels",
    "load_dataset",
    "split_sessions",
    "system_of",
]
