"""Overlap metrics of binary masks (NumPy only: no torch needed to compute or report them).

Dice = 2TP / (2TP + FP + FN) and IoU = TP / (TP + FP + FN), from confusion counts summed over
every evaluated pixel of a query volume (docs/protocol.md, evaluation).
"""
from typing import Tuple

import numpy as np


def binary_confusion(prediction, label) -> Tuple[int, int, int]:
    """True positives, false positives and false negatives of two binary masks.

    Args:
        prediction: array (or torch tensor) of any shape, non-zero = foreground.
        label: same shape as `prediction`, non-zero = foreground.
    Returns:
        (tp, fp, fn) as Python ints, summed over every element.
    """
    prediction = _as_bool_array(prediction)
    label = _as_bool_array(label)
    if prediction.shape != label.shape:
        raise ValueError(f"prediction shape {prediction.shape} != label shape {label.shape}")
    tp = int(np.count_nonzero(prediction & label))
    fp = int(np.count_nonzero(prediction & ~label))
    fn = int(np.count_nonzero(~prediction & label))
    return tp, fp, fn


def dice_from_counts(tp: int, fp: int, fn: int) -> float:
    """Dice = 2TP / (2TP + FP + FN).

    Convention for the empty case: when prediction and label are both empty (the denominator
    is 0) the masks agree perfectly and Dice is 1.0. An empty prediction against a non-empty
    label (or the reverse) gives 0.0 through the formula. In the evaluation protocol every
    evaluated slice contains the class, so the empty-label case never reaches the reported
    numbers.
    """
    _check_counts(tp, fp, fn)
    denominator = 2 * tp + fp + fn
    return 1.0 if denominator == 0 else 2.0 * tp / denominator


def iou_from_counts(tp: int, fp: int, fn: int) -> float:
    """IoU (Jaccard) = TP / (TP + FP + FN), with the same empty-case convention as Dice
    (both masks empty: 1.0)."""
    _check_counts(tp, fp, fn)
    denominator = tp + fp + fn
    return 1.0 if denominator == 0 else tp / denominator


def dice_score(prediction, label) -> float:
    """Dice of two binary masks of the same shape (see `dice_from_counts`)."""
    return dice_from_counts(*binary_confusion(prediction, label))


def iou_score(prediction, label) -> float:
    """IoU of two binary masks of the same shape (see `iou_from_counts`)."""
    return iou_from_counts(*binary_confusion(prediction, label))


def _as_bool_array(x) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor; torch itself is not imported here
        x = x.detach().cpu().numpy()
    return np.asarray(x) != 0


def _check_counts(tp: int, fp: int, fn: int) -> None:
    if min(tp, fp, fn) < 0:
        raise ValueError(f"confusion counts must be non-negative, got tp={tp} fp={fp} fn={fn}")
