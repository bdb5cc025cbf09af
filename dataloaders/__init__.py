"""Data loading: dataset facts, episodic training data and the evaluation protocol."""
from dataloaders.dataset_specs import DATASETS, DatasetSpec, get_dataset_spec, make_folds
from dataloaders.datasets import TestDataset, TrainDataset

__all__ = ["DATASETS", "DatasetSpec", "get_dataset_spec", "make_folds", "TestDataset", "TrainDataset"]
