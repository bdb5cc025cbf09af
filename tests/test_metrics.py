"""Dice, IoU and confusion counts (fafnet.evaluation.metrics)."""
import numpy as np
import pytest
import torch

from fafnet.evaluation import metrics


# ----------------------------------------------------------------------------- Dice / IoU


def test_dice_and_iou_against_hand_computed_values():
    prediction = np.array([[1, 1, 0, 0],
                           [1, 1, 0, 0]])
    label = np.array([[0, 1, 1, 0],
                      [0, 1, 1, 0]])
    # TP = 2, FP = 2, FN = 2: Dice = 4 / 8, IoU = 2 / 6.
    assert metrics.binary_confusion(prediction, label) == (2, 2, 2)
    assert metrics.dice_score(prediction, label) == pytest.approx(0.5)
    assert metrics.iou_score(prediction, label) == pytest.approx(1 / 3)


def test_dice_over_a_volume_pools_counts_across_slices():
    # Slice 0: TP 1, FP 0, FN 1; slice 1: TP 3, FP 1, FN 0 -> pooled TP 4, FP 1, FN 1.
    prediction = np.zeros((2, 2, 2), dtype=bool)
    label = np.zeros((2, 2, 2), dtype=bool)
    prediction[0, 0, 0] = label[0, 0, 0] = label[0, 0, 1] = True
    prediction[1] = True
    label[1] = [[True, True], [True, False]]
    assert metrics.binary_confusion(prediction, label) == (4, 1, 1)
    assert metrics.dice_score(prediction, label) == pytest.approx(8 / 10)
    assert metrics.iou_score(prediction, label) == pytest.approx(4 / 6)


def test_perfect_and_disjoint_masks():
    mask = np.eye(5, dtype=np.uint8)
    assert metrics.dice_score(mask, mask) == 1.0 and metrics.iou_score(mask, mask) == 1.0
    assert metrics.dice_score(mask, 1 - mask) == 0.0 and metrics.iou_score(mask, 1 - mask) == 0.0


def test_empty_cases_follow_the_documented_convention():
    empty, full = np.zeros((3, 3)), np.ones((3, 3))
    assert metrics.dice_score(empty, empty) == 1.0      # both empty: perfect agreement
    assert metrics.iou_score(empty, empty) == 1.0
    assert metrics.dice_score(empty, full) == 0.0       # empty prediction, non-empty label
    assert metrics.iou_score(empty, full) == 0.0
    assert metrics.dice_score(full, empty) == 0.0       # non-empty prediction, empty label
    assert metrics.iou_score(full, empty) == 0.0


def test_metrics_accept_tensors_and_reject_mismatched_shapes():
    prediction = torch.tensor([[1, 0], [1, 0]])
    label = torch.tensor([[1, 1], [0, 0]], dtype=torch.bool)
    assert metrics.dice_score(prediction, label) == pytest.approx(0.5)
    with pytest.raises(ValueError, match=r"prediction shape \(2, 2\) != label shape \(4,\)"):
        metrics.binary_confusion(prediction, torch.zeros(4))
    with pytest.raises(ValueError, match="non-negative"):
        metrics.dice_from_counts(-1, 0, 0)
