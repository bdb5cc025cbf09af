"""Data loading: dataset facts, episodic training data and the evaluation protocol."""
from dataloaders.dataset_specs import DATASETS, DatasetSpec, get_dataset_spec, group_classes, make_folds
from dataloaders.datasets import (SETTING2_PROTOCOLS, TestDataset, TrainDataset, excluded_classes_for,
                                  remaining_slices)

__all__ = ["DATASETS", "DatasetSpec", "get_dataset_spec", "group_classes", "make_folds",
           "SETTING2_PROTOCOLS", "TestDataset", "TrainDataset", "excluded_classes_for",
           "remaining_slices"]
