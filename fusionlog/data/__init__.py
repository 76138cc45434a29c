"""Datasets: readers, session rules, the named registry and splits."""

from fusionlog.data.raw import RawFile, RawSpec
from fusionlog.data.registry import dataset_info, dataset_names, load_dataset, system_of
from fusionlog.data.splits import MIN_POOL_SESSIONS, SplitResult, check_pool_size, hide_labels, split_sessions

__all__ = [
    "RawFile",
    "RawSpec",
    "SplitResult",
    "dataset_info",
    "dataset_names",
    "hide_labels",
    "load_dataset",
    "split_sessions",
    "check_pool_size",
    "MIN_POOL_SESSIONS",
    "system_of",
]
