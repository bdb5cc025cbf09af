"""What the protocol produces for one query volume and one class."""
from dataclasses import dataclass
from typing import List

import numpy as np

from fafnet.evaluation.metrics import dice_from_counts, iou_from_counts


@dataclass
class QueryOutcome:
    """One query volume's result for one class."""
    volume_index: int                    # the volume's position in the dataset
    image_name: str                      # its image file ("image_12.nii.gz")
    slice_indices: List[int]
    prediction: np.ndarray               # bool [n, H, W] over the evaluated slices
    tp: int
    fp: int
    fn: int

    @property
    def dice(self) -> float:
        return dice_from_counts(self.tp, self.fp, self.fn)

    @property
    def iou(self) -> float:
        return iou_from_counts(self.tp, self.fp, self.fn)
