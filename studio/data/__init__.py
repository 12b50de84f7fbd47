"""Datasets: the registry (dataset_info.json), readers, conversion to chat messages, templates and encoding."""
from studio.data.registry import DataError, DatasetEntry, entry, names, read_info, register  # noqa: F401
