"""The best single global intensity threshold (fafnet/evaluation/threshold_baseline.py): a hand-
computed known answer, the slices it counts, the CLI on NIfTI files, and its errors."""
import numpy as np
import pytest

from fafnet.io.nifti import Geometry, write_volume
from fafnet.evaluation import threshold_baseline as tb

GEOMETRY = Geometry((1.0, 1.0, 2.0), (0.0, 0.0, 0.0), (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))


def toy_volumes():
    """Two 2 x 4 x 4 volumes, organ label 1.

    A: slice 0 has the organ (4 pixels at 10) and 2 background pixels at 10; slice 1 has no
       organ but 16 pixels at 10, so it must not count.
    B: slice 0 has the organ (4 pixels at 20) and 4 background pixels at 15; slice 1 is empty.
    One threshold t for both, predicting image >= t:
       0 < t <= 10:  A 2*4/(6+4) = 0.8,  B 2*4/(8+4) = 2/3  -> mean 0.7333 (the best)
       10 < t <= 15: A 0,                B 2/3              -> 0.3333
       15 < t <= 20: A 0,                B 1                -> 0.5
    """
    image_a = np.zeros((2, 4, 4), np.float32)
    label_a = np.zeros((2, 4, 4), np.int64)
    image_a[0, :2, :2] = 10
    label_a[0, :2, :2] = 1
    image_a[0, 3, :2] = 10
    image_a[1] = 10
    image_b = np.zeros((2, 4, 4), np.float32)
    label_b = np.zeros((2, 4, 4), np.int64)
    image_b[0, 2:, 2:] = 20
    label_b[0, 2:, 2:] = 1
    image_b[0, :2, 2:] = 15
    return [(image_a, label_a), (image_b, label_b)]


def test_one_global_threshold_maximises_the_mean_per_volume_dice_over_organ_slices():
    best = tb.best_threshold_dice(toy_volumes(), organ=1)
    assert best["dice"] == pytest.approx((0.8 + 2 / 3) / 2)
    assert best["direction"] == "above"
    assert 0 < best["threshold"] <= 10


def test_the_curves_hold_every_threshold_and_both_directions():
    edges = np.array([0.0, 5.0, 12.0, 17.0, 25.0])   # inner edges 5, 12, 17
    curves = tb.threshold_dice_curves(toy_volumes(), 1, edges)
    np.testing.assert_allclose(curves["above"], [(0.8 + 2 / 3) / 2, (0 + 2 / 3) / 2, (0 + 1) / 2])
    # Below 5: A predicts its 10 zero pixels (Dice 0), B its 8 zero pixels (Dice 0).
    assert curves["below"][0] == 0.0


def test_a_missing_organ_is_an_error_naming_it():
    with pytest.raises(ValueError, match="organ 7 occurs in none of the 2 volumes"):
        tb.best_threshold_dice(toy_volumes(), organ=7)


def test_cli_reads_a_dataset_folder_and_prints_the_table(tmp_path, capsys):
    for index, (image, label) in enumerate(toy_volumes()):
        write_volume(image, GEOMETRY, str(tmp_path / f"image_{index}.nii.gz"))
        write_volume(label.astype(np.uint8), GEOMETRY, str(tmp_path / f"label_{index}.nii.gz"))
    tb.main(["--data-dir", str(tmp_path), "--organs", "1"])
    out = capsys.readouterr().out
    assert "2 volumes" in out
    assert "| spleen | 73.33 |" in out and "image >= threshold" in out


def test_cli_fails_clearly_on_an_empty_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="no image_<i>.nii.gz files"):
        tb.main(["--data-dir", str(tmp_path)])
