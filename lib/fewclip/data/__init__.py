"""Datasets: readers for the CoOp benchmarks and offline tasks, few-shot sampling, templates."""

from .base import Dataset, DatasetError, Datum, list_datasets, load_dataset, register_dataset

__all__ = ["Dataset", "DatasetError", "Datum", "list_datasets", "load_dataset", "register_dataset"]
