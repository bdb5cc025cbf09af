"""Pre-processing CLIs (docs/protocol.md section 12) on tiny raw inputs written here in each
dataset's raw format: NIfTI with non-trivial spacing and origin, a DICOM series written with
SimpleITK, PNG masks. Checks sizes, spacing, label values, intensity range, geometry, that
labels stay on the anatomy they mark, that bad input fails before anything is written, the
manifest, and the MRI routes' integer (release) and float arithmetic against values computed
by hand."""
import hashlib
import json
import os
import shutil

import cv2
import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from fafnet.preprocessing import chaost2 as chaos
from fafnet.preprocessing import cmr
from fafnet.io.nifti import Geometry
from fafnet.io.raw import natural_sort_key
from fafnet.preprocessing.common import (centre_crop_or_pad, clip_top_percentile, flip_rows, mr_route,
                                         preprocess_mr, resample_image, resample_label, resampled_size)
from fafnet.preprocessing.manifest import MANIFEST_NAME, raw_differences
from fafnet.preprocessing import prostate_mri as prostate
from fafnet.preprocessing import sabs
from tests.helpers import CHAOS_GREYS, CHAOS_SLICES, truncate, write_chaos_patient, write_dicom_series

# A non-trivial direction (x and y axes swapped and mirrored) catches geometry mistakes that
# an identity direction hides.
DIRECTION = (0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0)


def write_nifti(array, path, spacing, origin=(-40.0, 25.0, 12.0), direction=DIRECTION):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    sitk.WriteImage(image, path)


def physical_centroid(label_path, value):
    """World position (x, y, z) of the centroid of `value` in a label volume."""
    image = sitk.ReadImage(label_path)
    zyx = np.argwhere(sitk.GetArrayFromImage(image) == value).mean(axis=0)
    return np.array(image.TransformContinuousIndexToPhysicalPoint([float(v) for v in zyx[::-1]]))


def read(path):
    image = sitk.ReadImage(path)
    return sitk.GetArrayFromImage(image), image


TWO_VOLUMES = ["image_0.nii.gz", "image_1.nii.gz", "label_0.nii.gz", "label_1.nii.gz",
               MANIFEST_NAME]


def files_in(folder):
    return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


# ----------------------------------------------------------------------------- helpers

def test_size_rule_known_answers():
    # SABS: 448 columns at s mm to 1.75 s mm gives 257; slices keep their spacing: n + 1.
    new_spacing = (0.7 * 1.75, 0.8 * 1.75, 2.5)
    assert resampled_size((448, 448, 90), (0.7, 0.8, 2.5), new_spacing) == (257, 257, 91)
    assert resampled_size((80, 64, 5), (1.5, 1.4, 6.0), (1.25, 1.25, 7.7)) == (97, 72, 4)


def test_natural_sort_orders_numbers_numerically():
    names = ["patient10_C0.nii.gz", "patient2_C0.nii.gz", "patient1_C0.nii.gz"]
    assert sorted(names, key=natural_sort_key) == ["patient1_C0.nii.gz", "patient2_C0.nii.gz",
                                                   "patient10_C0.nii.gz"]


def test_centre_crop_or_pad_keeps_the_centre_index_and_moves_the_origin():
    geometry = Geometry((2.0, 3.0, 1.0), (10.0, 20.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    array = np.arange(1 * 5 * 8, dtype=np.float32).reshape(1, 5, 8)
    out, new_geometry = centre_crop_or_pad(array, geometry, (4, 4), pad_value=-1)
    assert out[0, 2, 2] == array[0, 2, 4]       # centre index n // 2 -> size // 2
    assert np.array_equal(out[0, 0], array[0, 0, 2:6])
    assert new_geometry.origin == (10.0 + 2 * 2.0, 20.0 + 0 * 3.0, 0.0)
    padded, padded_geometry = centre_crop_or_pad(array, geometry, (9, 8), pad_value=-1)
    assert np.all(padded[0, :2] == -1) and np.all(padded[0, -2:] == -1)
    assert np.array_equal(padded[0, 2:7], array[0])
    assert padded_geometry.origin == (10.0, 20.0 - 2 * 3.0, 0.0)


def test_flip_rows_keeps_every_voxel_in_place():
    geometry = Geometry((0.5, 0.7, 3.0), (1.0, 2.0, 3.0), DIRECTION)
    array = np.zeros((2, 6, 4), dtype=np.float32)
    array[1, 1, 3] = 1
    flipped, new_geometry = flip_rows(array, geometry)
    before = new_geometry.apply(sitk.GetImageFromArray(array))
    geometry.apply(before)
    after = new_geometry.apply(sitk.GetImageFromArray(flipped))
    (z, y, x), = np.argwhere(flipped == 1)
    assert (z, y, x) == (1, 4, 3)
    assert np.allclose(before.TransformIndexToPhysicalPoint((3, 1, 1)),
                       after.TransformIndexToPhysicalPoint((int(x), int(y), int(z))))


def test_label_resampling_rounds_each_class_separately():
    label = np.zeros((1, 4, 4), dtype=np.uint8)
    label[0, :, :2] = 1
    label[0, :, 2:] = 7
    geometry = Geometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    out, _ = resample_label(label, geometry, (2.0, 1.0, 1.0))
    assert out.shape == (2, 5, 3)               # int(n * old / new + 1) per axis
    assert np.array_equal(out[0, 0], [1, 7, 0])  # x = 4 lies past the data
    assert not out[1].any() and not out[0, 4].any()
    # At x = 1.5 each class interpolates to 0.5, which rounds to 0 (half to even): the seam
    # between touching classes becomes background instead of either class.
    out, _ = resample_label(label, geometry, (0.5, 1.0, 1.0))
    assert np.array_equal(out[0, 0], [1, 1, 1, 0, 7, 7, 7, 0, 0])


# ----------------------------------------------------------------------------- SABS

SABS_SPACING = (0.7, 0.8, 2.5)   # (x, y, z)


def make_sabs_volume(organ_hu):
    """(3, 512, 512) HU image and label: air, a body, a liver box (6) at `organ_hu`, a spleen
    box (1) on slices 1-2, bone; plus the expected output column/row of the liver centre."""
    hu = np.full((3, 512, 512), -1000, dtype=np.int16)
    hu[:, 60:460, 40:480] = 40
    hu[:, 400:430, 240:270] = 1200                 # bone, above the window
    label = np.zeros(hu.shape, dtype=np.uint8)
    hu[:, 200:261, 300:381] = organ_hu
    label[:, 200:261, 300:381] = 6
    hu[1:, 100:141, 100:151] = 100
    label[1:, 100:141, 100:151] = 1
    return hu, label


@pytest.fixture(scope="module")
def sabs_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("sabs")
    raw, out = root / "raw", root / "out"
    for number, organ_hu in ((3, 220), (1, 180)):  # written out of order; numbers not contiguous
        hu, label = make_sabs_volume(organ_hu)
        write_nifti(hu, str(raw / "img" / f"img{number:04d}.nii.gz"), SABS_SPACING)
        write_nifti(label, str(raw / "label" / f"label{number:04d}.nii.gz"), SABS_SPACING)
    paths = sabs.preprocess_sabs(str(raw), str(out))
    return raw, out, paths


def test_sabs_output_layout_size_spacing_and_range(sabs_run):
    raw, out, paths = sabs_run
    assert files_in(out) == TWO_VOLUMES
    assert paths == [str(out / "image_0.nii.gz"), str(out / "label_0.nii.gz"),
                     str(out / "image_1.nii.gz"), str(out / "label_1.nii.gz")]
    image, image_obj = read(str(out / "image_0.nii.gz"))
    label, label_obj = read(str(out / "label_0.nii.gz"))
    assert image.shape == label.shape == (4, 257, 257)   # one extra slice past the data
    assert np.allclose(image_obj.GetSpacing(), (0.7 * 1.75, 0.8 * 1.75, 2.5))
    assert image_obj.GetDirection() == DIRECTION
    assert np.allclose(label_obj.GetOrigin(), image_obj.GetOrigin())
    assert image.min() == 0 and image.max() == pytest.approx(255)
    assert np.all(image[3] == 0)
    assert set(np.unique(label)) == {0, 1, 6}
    assert label.dtype == np.uint8


def test_sabs_labels_stay_on_their_anatomy(sabs_run):
    raw, out, _ = sabs_run
    # Sorted raw order: img0001 (liver at 180 HU) is volume 0, img0003 (220 HU) volume 1.
    for index, organ_hu in ((0, 180), (1, 220)):
        image, _ = read(str(out / f"image_{index}.nii.gz"))
        label, _ = read(str(out / f"label_{index}.nii.gz"))
        assert np.median(image[label == 6]) == pytest.approx((organ_hu + 125) / 400 * 255, abs=0.5)
        assert np.median(image[label == 1]) == pytest.approx(225 / 400 * 255, abs=0.5)
        assert not np.any(label[0] == 1)  # the spleen box starts on slice 1
        # Output pixel j samples input pixel 32 + 1.75 j: the box centre (230, 340) moves to
        # ((230 - 32) / 1.75, (340 - 32) / 1.75).
        rows, cols = np.nonzero(label[1] == 6)
        assert rows.mean() == pytest.approx(198 / 1.75, abs=0.6)
        assert cols.mean() == pytest.approx(308 / 1.75, abs=0.6)
    for value in (1, 6):  # the world position of each organ is unchanged
        assert np.allclose(physical_centroid(str(raw / "label" / "label0001.nii.gz"), value),
                           physical_centroid(str(out / "label_0.nii.gz"), value), atol=1.0)


def test_sabs_rerun_skips_finished_volumes_unless_overwrite(sabs_run):
    raw, out, _ = sabs_run
    target = out / "image_1.nii.gz"
    os.utime(target, (1, 1))
    sabs.main(["--raw-dir", str(raw), "--out-dir", str(out)])
    assert os.path.getmtime(target) == 1
    sabs.main(["--raw-dir", str(raw), "--out-dir", str(out), "--overwrite"])
    assert os.path.getmtime(target) > 1
    assert files_in(out) == TWO_VOLUMES


def test_sabs_bad_input_fails_before_writing(tmp_path):
    with pytest.raises(FileNotFoundError, match="raw SABS folder not found"):
        sabs.preprocess_sabs(str(tmp_path / "missing"), str(tmp_path / "out"))
    raw = tmp_path / "raw"
    small = np.zeros((2, 80, 80), dtype=np.int16)
    write_nifti(small, str(raw / "img" / "img0001.nii.gz"), SABS_SPACING)
    write_nifti(small.astype(np.uint8), str(raw / "label" / "label0001.nii.gz"), SABS_SPACING)
    write_nifti(small, str(raw / "img" / "img0002.nii.gz"), SABS_SPACING)
    with pytest.raises(FileNotFoundError, match=r"img0002\.nii\.gz has no label"):
        sabs.preprocess_sabs(str(raw), str(tmp_path / "out"))
    bad = small.astype(np.uint8)
    bad[0, 0, 0] = 14
    write_nifti(bad, str(raw / "label" / "label0002.nii.gz"), SABS_SPACING)
    with pytest.raises(ValueError, match=r"label0002\.nii\.gz holds value\(s\) \[14\]"):
        sabs.preprocess_sabs(str(raw), str(tmp_path / "out"))
    assert files_in(tmp_path / "out") == []


# ----------------------------------------------------------------------------- CHAOS T2-SPIR



@pytest.fixture(scope="module")
def chaos_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("chaos")
    raw, out = root / "raw", root / "out"
    raw_volume = write_chaos_patient(raw, 10, intensity_scale=2.0)
    write_chaos_patient(raw, 2)
    chaos.main(["--raw-dir", str(raw), "--out-dir", str(out)])
    return raw, out, raw_volume


def test_chaos_output_size_spacing_values_and_range(chaos_run):
    raw, out, raw_volume = chaos_run
    assert files_in(out) == TWO_VOLUMES
    image, image_obj = read(str(out / "image_1.nii.gz"))   # patient 10 comes after patient 2
    label, label_obj = read(str(out / "label_1.nii.gz"))
    # 5 slices of 7.7 mm, whose spacing the release's NIfTI round trip stores as float32's
    # 7.6999998: int(5 * 7.6999998 / 7.70 + 1) = 5 slices (the exact spacing would give 6).
    assert image.shape == label.shape == (5, 256, 256)
    assert np.allclose(image_obj.GetSpacing(), (1.25, 1.25, 7.70))
    assert np.allclose(label_obj.GetOrigin(), image_obj.GetOrigin())
    assert set(np.unique(label)) == {0, 1, 2, 3, 4}
    assert image.max() <= np.percentile(raw_volume, 99.5) + 1e-3   # the outlier is clipped
    assert image.min() == 0  # padding with the minimum; the extra slice resamples to 0
    # the release's arithmetic (default) keeps the DICOM's integer pixel type
    assert np.array_equal(image, np.trunc(image))


def test_chaos_masks_follow_the_slices_they_were_drawn_on(chaos_run):
    raw, out, _ = chaos_run
    for index, scale in ((0, 1.0), (1, 2.0)):
        image, _ = read(str(out / f"image_{index}.nii.gz"))
        label, _ = read(str(out / f"label_{index}.nii.gz"))
        for i in range(CHAOS_SLICES):   # output slices are in position order, bottom to top
            organ = label[i] > 0
            expected = {63: 1, 126: 2, 189: 3, 252: 4}[CHAOS_GREYS[i]]
            assert set(np.unique(label[i][organ])) == {expected}
            # interior pixels carry the organ intensity drawn on the same DICOM slice
            assert np.median(image[i][organ]) == pytest.approx((300 + 100 * i) * scale, rel=0.02)
            assert np.mean(image[i][organ] > 200 * scale) > 0.9
    for i, value in ((0, 1), (1, 2)):   # world positions survive the row flip and resampling
        raw_centroid = physical_centroid_of_dicom_mask(raw / "2", i)
        out_label_obj = sitk.ReadImage(str(out / "label_0.nii.gz"))
        zyx = np.argwhere(sitk.GetArrayFromImage(out_label_obj)[i] == value).mean(axis=0)
        out_centroid = out_label_obj.TransformContinuousIndexToPhysicalPoint(
            [float(zyx[1]), float(zyx[0]), float(i)])
        assert np.allclose(raw_centroid, out_centroid, atol=1.0)


def physical_centroid_of_dicom_mask(patient_dir, slice_index):
    """World centroid of the organ box on DICOM slice `slice_index` (bottom to top)."""
    reader = sitk.ImageSeriesReader()
    folder = str(patient_dir / "T2SPIR" / "DICOM_anon")
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(folder))
    series = reader.Execute()
    r0, c0 = 6 + 5 * slice_index, 10 + 8 * slice_index
    return np.array(series.TransformContinuousIndexToPhysicalPoint(
        [c0 + 9.5, r0 + 7.5, float(slice_index)]))


def test_chaos_bad_masks_fail_before_writing(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "out"
    write_chaos_patient(raw, 1)
    write_chaos_patient(raw, 2, grey_override=100)
    with pytest.raises(ValueError, match=r"IMG-0002-00002\.png holds grey value\(s\) \[100\]"):
        chaos.preprocess_chaos(str(raw), str(out))
    assert files_in(out) == []
    os.remove(raw / "2" / "T2SPIR" / "Ground" / "IMG-0002-00002.png")
    with pytest.raises(ValueError, match="holds 4 PNG masks but .* holds 5 DICOM slices"):
        chaos.preprocess_chaos(str(raw), str(out))
    os.rename(raw / "1" / "T2SPIR" / "Ground", raw / "1" / "T2SPIR" / "GT")
    with pytest.raises(FileNotFoundError, match="patient 1 ground-truth folder not found"):
        chaos.preprocess_chaos(str(raw), str(out))
    assert files_in(out) == []


# ----------------------------------------------------------------------------- CMR and prostate

MR_SPACING = (1.4, 1.3, 10.0)


def make_mr_volume(label_values, shape=(3, 60, 70)):
    """An MR-like volume with one box per label value, each at its own intensity."""
    image = np.full(shape, 50.0, dtype=np.float32)
    label = np.zeros(shape, dtype=np.uint16)
    for k, value in enumerate(label_values):
        r0, c0 = 4 + 6 * (k % 8), 4 + 7 * (k % 8)
        image[:, r0:r0 + 6, c0:c0 + 6] = 400 + 50 * k
        label[:, r0:r0 + 6, c0:c0 + 6] = value
    image[1, 0, 0] = 1e5  # an outlier for the 99.5th percentile clip
    return image, label


def test_cmr_keeps_challenge_labels_geometry_and_anatomy(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "out"
    image, label = make_mr_volume((200, 500, 600))
    for patient in ("patient10", "patient2"):
        write_nifti(image, str(raw / "c0" / f"{patient}_C0.nii.gz"), MR_SPACING)
        write_nifti(label, str(raw / "gt" / f"{patient}_C0_manual.nii.gz"), MR_SPACING)
    cmr.main(["--raw-dir", str(raw), "--out-dir", str(out)])
    out_image, image_obj = read(str(out / "image_0.nii.gz"))
    out_label, _ = read(str(out / "label_0.nii.gz"))
    assert out_image.shape == out_label.shape == (4, 256, 256)   # int(3 * 10 / 7.99 + 1) = 4
    assert np.allclose(image_obj.GetSpacing(), (1.25, 1.25, 7.99))
    assert set(np.unique(out_label)) == {0, 200, 500, 600}
    assert out_image.max() <= np.percentile(image, 99.5) + 1e-3
    for k, value in enumerate((200, 500, 600)):
        assert np.median(out_image[out_label == value]) == pytest.approx(400 + 50 * k, rel=0.02)
        before = physical_centroid(str(raw / "gt" / "patient2_C0_manual.nii.gz"), value)
        after = physical_centroid(str(out / "label_0.nii.gz"), value)
        assert np.allclose(before[:2], after[:2], atol=1.3)
        # The boxes span every slice, so the new grid's coarser sampling of their z extent
        # may move the z centroid, but by less than half a raw slice.
        assert abs(before[2] - after[2]) < MR_SPACING[2] / 2


def test_cmr_mismatched_shapes_fail_before_writing(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "out"
    image, label = make_mr_volume((200,))
    write_nifti(image, str(raw / "patient1_C0.nii.gz"), MR_SPACING)
    write_nifti(label, str(raw / "patient1_C0_manual.nii.gz"), MR_SPACING)
    write_nifti(image, str(raw / "patient2_C0.nii.gz"), MR_SPACING)
    write_nifti(label[:, :-1], str(raw / "patient2_C0_manual.nii.gz"), MR_SPACING)
    with pytest.raises(ValueError, match=r"patient2_C0_manual\.nii\.gz has shape \(3, 59, 70\)"):
        cmr.preprocess_cmr(str(raw), str(out))
    assert files_in(out) == []


def test_prostate_labels_and_rerun(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "out"
    image, label = make_mr_volume(range(1, 9), shape=(2, 70, 64))
    write_nifti(image, str(raw / "000001_img.nii.gz"), MR_SPACING)
    write_nifti(label.astype(np.uint8), str(raw / "000001_mask.nii.gz"), MR_SPACING)
    paths = prostate.preprocess_prostate(str(raw), str(out))
    assert paths == [str(out / "image_0.nii.gz"), str(out / "label_0.nii.gz")]
    out_image, image_obj = read(paths[0])
    out_label, _ = read(paths[1])
    assert out_image.shape == (3, 256, 256)     # int(2 * 10 / 7.7 + 1) = 3
    assert np.allclose(image_obj.GetSpacing(), (1.25, 1.25, 7.70))
    assert set(np.unique(out_label)) == set(range(9))
    # a second raw volume with a label the dataset does not define: the changed raw folder is
    # refused, and with overwrite the bad label fails before anything is removed or written
    bad = label.astype(np.uint8)
    bad[0, 0, 0] = 9
    write_nifti(image, str(raw / "000002_img.nii.gz"), MR_SPACING)
    write_nifti(bad, str(raw / "000002_mask.nii.gz"), MR_SPACING)
    before = {name: os.stat(out / name).st_mtime_ns for name in files_in(out)}
    with pytest.raises(ValueError, match=r"raw file added: 000002_img\.nii\.gz"):
        prostate.preprocess_prostate(str(raw), str(out))
    with pytest.raises(ValueError, match=r"000002_mask\.nii\.gz holds value\(s\) \[9\]"):
        prostate.preprocess_prostate(str(raw), str(out), overwrite=True)
    assert {name: os.stat(out / name).st_mtime_ns for name in files_in(out)} == before
    assert files_in(out) == ["image_0.nii.gz", "label_0.nii.gz", MANIFEST_NAME]


@pytest.mark.parametrize("module", [sabs, chaos, cmr, prostate])
def test_every_cli_has_help(module, capsys):
    with pytest.raises(SystemExit) as exit_info:
        module.main(["--help"])
    assert exit_info.value.code == 0
    assert "--raw-dir" in capsys.readouterr().out


def test_cli_reports_bad_input_in_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cmr.main(["--raw-dir", str(tmp_path / "nowhere"), "--out-dir", str(tmp_path / "out")])
    assert exit_info.value.code == 2   # a user error: one line, exit status 2
    error = capsys.readouterr().err
    assert "raw CMR bSSFP folder not found" in error and str(tmp_path / "nowhere") in error
    assert "Traceback" not in error


# ----------------------------------------------------------------------------- MRI arithmetic

def test_clip_value_is_truncated_in_integer_arithmetic():
    values = np.arange(200, dtype=np.int16)        # 99.5th percentile: 0.995 * 199 = 198.005
    clipped = clip_top_percentile(values)
    assert clipped.dtype == np.int16
    assert clipped[-3:].tolist() == [197, 198, 198]          # 199 -> int(198.005) = 198
    floats = clip_top_percentile(values.astype(np.float32))
    assert floats.dtype == np.float32 and floats[-1] == np.float32(198.005) and floats[-2] == 198
    negative = clip_top_percentile(-values[::-1].copy())     # p = -0.995: 0 -> int(-0.995) = 0
    assert negative[-1] == 0 and negative.dtype == np.int16


def test_integer_resampling_truncates_toward_zero():
    geometry = Geometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    row = np.array([[[10, 13, 20]]], dtype=np.int16)
    # halving the x spacing: int(3 * 1 / 0.5 + 1) = 7 samples at x = 0, 0.5, ..., 3; from
    # x = 2.5 on they lie past the data and get 0
    out, _ = resample_image(row, geometry, (0.5, 1.0, 1.0))
    assert out.dtype == np.int16 and out[0, 0].tolist() == [10, 11, 13, 16, 20, 0, 0]   # 11.5, 16.5
    negative, _ = resample_image(-row, geometry, (0.5, 1.0, 1.0))
    assert negative[0, 0].tolist() == [-10, -11, -13, -16, -20, 0, 0]                     # toward 0
    floats, _ = resample_image(row.astype(np.float32), geometry, (0.5, 1.0, 1.0))
    assert floats.dtype == np.float32 and floats[0, 0].tolist() == [10, 11.5, 13, 16.5, 20, 0, 0]


def write_integer_cmr(raw):
    """int16 image 100 + 7x + 2y + 50z on 2 x 6 x 8 voxels of 2.5 x 1.25 x 10 mm, one outlier."""
    z, y, x = np.mgrid[0:2, 0:6, 0:8]
    image = (100 + 7 * x + 2 * y + 50 * z).astype(np.int16)
    image[0, 5, 7] = 30000
    label = np.zeros(image.shape, np.int16)
    label[:, 1:4, 2:5] = 200
    identity = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    write_nifti(image, str(raw / "patient1_C0.nii.gz"), (2.5, 1.25, 10.0), direction=identity)
    write_nifti(label, str(raw / "patient1_C0_manual.nii.gz"), (2.5, 1.25, 10.0), direction=identity)


@pytest.mark.parametrize("arithmetic", ["release", "float"])
def test_mri_route_arithmetic_against_hand_values(tmp_path, arithmetic):
    raw, out = tmp_path / "raw", tmp_path / "out"
    write_integer_cmr(raw)
    flag = [] if arithmetic == "release" else ["--arithmetic", "float"]
    cmr.main(["--raw-dir", str(raw), "--out-dir", str(out)] + flag)
    image, _ = read(str(out / "image_0.nii.gz"))
    # z: int(2 * 10 / 7.99 + 1) = 3; y: 6 -> 7; x: 8 -> 17 (columns at x = k / 2), then padded;
    # centring puts resampled (y, k) at (y + 125, k + 120). Slice 0 lies on input slice 0.
    assert image.shape == (3, 256, 256)
    # Column 3 lies halfway between x = 1 and 2: 100 + 7 * 1.5 + 2 * 2 = 114.5 at y 2.
    voxel = image[0, 2 + 125, 3 + 120]
    # Clip: the 96 values sorted end with 209 (x 7, y 5, z 1) and the outlier 30000; the 99.5th
    # percentile is 209 + (0.995 * 95 - 94) * (30000 - 209) = 15849.275, kept by column 14.
    clip = image[0, 5 + 125, 14 + 120]
    if arithmetic == "release":
        assert voxel == 114 and clip == 15849
        assert np.array_equal(image, np.trunc(image))
    else:
        assert voxel == 114.5 and clip == pytest.approx(15849.275, abs=1e-3)
    assert image.min() == 0                    # padding with the minimum (past-the-data voxels)


def test_arithmetic_is_named_recorded_and_checked(tmp_path):
    route = cmr.cmr_route()
    assert route.parameters["dataset"] == "CMR" and route.parameters["arithmetic"] == "release"
    assert route.parameters["target_spacing_xyz"] == [1.25, 1.25, 7.99]
    assert route.parameters["clip_percentile"] == 99.5 and route.parameters["size_yx"] == [256, 256]
    assert chaos.chaos_route("float").parameters["arithmetic"] == "float"
    assert prostate.prostate_route().parameters["target_spacing_xyz"] == [1.25, 1.25, 7.7]
    assert sabs.sabs_route().parameters["hu_window"] == [-125.0, 275.0]
    with pytest.raises(ValueError, match=r"arithmetic must be one of \['release', 'float'\], got 'double'"):
        mr_route("CMR", (1.25, 1.25, 7.7), (0, 1), "double")
    with pytest.raises(ValueError, match="arithmetic must be one of"):
        cmr.preprocess_cmr(str(tmp_path), str(tmp_path / "out"), arithmetic="double")
    geometry = Geometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    with pytest.raises(ValueError, match="arithmetic must be one of"):
        preprocess_mr(np.zeros((1, 4, 4), np.int16), np.zeros((1, 4, 4), np.uint8), geometry,
                      (1.0, 1.0, 1.0), arithmetic="int")


@pytest.mark.parametrize("module", [chaos, cmr, prostate])
def test_mri_clis_offer_the_arithmetic_and_point_to_data_processed(module, capsys):
    with pytest.raises(SystemExit):
        module.main(["--help"])
    text = capsys.readouterr().out
    assert "--arithmetic {release,float}" in text and "data_processed/" in text
# ----------------------------------------------------------------------------- damaged raw input

def write_noisy_cmr_pair(raw, patient, seed=0, **kwargs):
    """A CMR pair whose image and label are noisy (so even the label is several kB and a
    400-byte prefix really cuts it)."""
    rng = np.random.default_rng(seed)
    image = (300 + 50 * rng.normal(size=(3, 60, 70))).astype(np.float32)
    label = rng.choice(np.array([0, 200, 500, 600], np.uint16), size=image.shape)
    image_path, label_path = str(raw / f"{patient}_C0.nii.gz"), str(raw / f"{patient}_C0_manual.nii.gz")
    write_nifti(image, image_path, MR_SPACING, **kwargs)
    write_nifti(label, label_path, MR_SPACING, **kwargs)
    return image_path, label_path


@pytest.mark.parametrize("role", ["image", "label"])
@pytest.mark.parametrize("keep", ["half", 400])
def test_truncated_raw_volume_fails_before_writing(tmp_path, capsys, role, keep):
    raw, out = tmp_path / "raw", tmp_path / "out"
    write_noisy_cmr_pair(raw, "patient1")
    paths = dict(zip(("image", "label"), write_noisy_cmr_pair(raw, "patient2", seed=1)))
    truncate(paths[role], os.path.getsize(paths[role]) // 2 if keep == "half" else 400)
    with pytest.raises(SystemExit) as exit_info:
        cmr.main(["--raw-dir", str(raw), "--out-dir", str(out)])
    assert exit_info.value.code == 2   # a user error: one line, exit status 2
    error = capsys.readouterr().err
    assert f"{paths[role]}: damaged or truncated gzip stream" in error
    assert "Traceback" not in error and error.count("\n") == 1
    assert files_in(out) == []


def test_truncated_sabs_image_fails_before_writing(tmp_path):
    raw = tmp_path / "raw"
    hu, label = make_sabs_volume(200)
    hu = hu + np.random.default_rng(0).integers(0, 40, hu.shape, dtype=np.int16)
    write_nifti(hu, str(raw / "img" / "img0001.nii.gz"), SABS_SPACING)
    write_nifti(label, str(raw / "label" / "label0001.nii.gz"), SABS_SPACING)
    truncate(str(raw / "img" / "img0001.nii.gz"), os.path.getsize(raw / "img" / "img0001.nii.gz") // 2)
    with pytest.raises(ValueError, match=r"img0001\.nii\.gz: damaged or truncated gzip stream"):
        sabs.preprocess_sabs(str(raw), str(tmp_path / "out"))
    assert files_in(tmp_path / "out") == []


def test_non_finite_raw_image_fails_with_the_count(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "out"
    image, label = make_mr_volume((200,))
    image[0, 5, 5], image[1, 6, 6], image[2, 7, 7] = np.nan, np.inf, np.nan
    write_nifti(image, str(raw / "patient1_C0.nii.gz"), MR_SPACING)
    write_nifti(label, str(raw / "patient1_C0_manual.nii.gz"), MR_SPACING)
    on_disk = np.asarray(nib.load(str(raw / "patient1_C0.nii.gz")).dataobj)   # second reader
    assert np.isnan(on_disk).sum() == 2 and np.isinf(on_disk).sum() == 1
    with pytest.raises(ValueError, match=r"patient1_C0\.nii\.gz has 3 non-finite voxel\(s\) of "
                                         r"12600 \(2 NaN, 1 infinite\)"):
        cmr.preprocess_cmr(str(raw), str(out))
    bad_label = label.astype(np.float32)
    bad_label[0, 0, 0] = np.nan
    image[np.isnan(image) | np.isinf(image)] = 0
    write_nifti(image, str(raw / "patient1_C0.nii.gz"), MR_SPACING)
    write_nifti(bad_label, str(raw / "patient1_C0_manual.nii.gz"), MR_SPACING)
    with pytest.raises(ValueError, match=r"label .*patient1_C0_manual\.nii\.gz has 1 non-finite"):
        cmr.preprocess_cmr(str(raw), str(out))
    assert files_in(out) == []


def test_truncated_dicom_slice_is_named(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "out"
    write_chaos_patient(raw, 1)
    dicom = raw / "1" / "T2SPIR" / "DICOM_anon" / "IMG-0002-00003.dcm"
    truncate(str(dicom), os.path.getsize(dicom) // 2)
    with pytest.raises(ValueError, match=r"not in the series \(unreadable, truncated or from "
                                         r"another series\): IMG-0002-00003\.dcm"):
        chaos.preprocess_chaos(str(raw), str(out))
    assert files_in(out) == []


# ----------------------------------------------------------------------------- manifest

def read_manifest(out):
    with open(out / MANIFEST_NAME, encoding="utf-8") as f:
        return json.load(f)


def test_manifest_traces_every_output_to_its_raw_files(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "out"
    write_noisy_cmr_pair(raw / "a", "patient10", seed=10)
    write_noisy_cmr_pair(raw / "b", "patient2", seed=2)
    cmr.preprocess_cmr(str(raw), str(out))
    manifest = read_manifest(out)
    assert manifest["dataset"] == "CMR" and manifest["format"] == 1
    assert manifest["route"]["name"] == "mri_clip_resample_crop"
    assert manifest["route"]["parameters"]["target_spacing_xyz"] == [1.25, 1.25, 7.99]
    assert manifest["raw_dir"] == str(raw)
    assert [(v["index"], v["case"], v["image"], v["label"]) for v in manifest["volumes"]] == [
        (0, "patient2_C0", "image_0.nii.gz", "label_0.nii.gz"),
        (1, "patient10_C0", "image_1.nii.gz", "label_1.nii.gz")]
    record = manifest["volumes"][1]["raw"]["label"][0]
    assert record["path"] == "a/patient10_C0_manual.nii.gz"
    raw_file = raw / "a" / "patient10_C0_manual.nii.gz"
    assert record["size"] == raw_file.stat().st_size
    assert record["sha256"] == hashlib.sha256(raw_file.read_bytes()).hexdigest()


def test_chaos_manifest_lists_every_dicom_slice_and_mask(chaos_run):
    raw, out, _ = chaos_run
    volumes = read_manifest(out)["volumes"]
    assert [v["case"] for v in volumes] == ["2", "10"]
    slices = volumes[1]["raw"]["image"]
    assert [s["path"] for s in slices] == [f"10/T2SPIR/DICOM_anon/IMG-0002-{i:05d}.dcm"
                                           for i in range(1, 6)]
    assert all(s["size"] == (raw / s["path"]).stat().st_size for s in slices)
    assert len(volumes[1]["raw"]["label"]) == 5
    assert read_manifest(out)["route"]["parameters"]["row_flip"] is True


def test_changed_raw_folder_is_refused_or_redone_with_overwrite(tmp_path, capsys):
    raw, out = tmp_path / "raw", tmp_path / "out"
    write_noisy_cmr_pair(raw, "patient1", seed=1)
    write_noisy_cmr_pair(raw, "patient2", seed=2)
    cmr.preprocess_cmr(str(raw), str(out))
    stamps = {name: os.stat(out / name).st_mtime_ns for name in files_in(out)}
    # added: it would sort first and shift every index
    write_noisy_cmr_pair(raw, "patient0", seed=7)
    with pytest.raises(SystemExit) as exit_info:
        cmr.main(["--raw-dir", str(raw), "--out-dir", str(out)])
    assert exit_info.value.code == 2   # a user error: one line, exit status 2
    error = capsys.readouterr().err
    assert ("raw file added: patient0_C0.nii.gz; raw file added: patient0_C0_manual.nii.gz"
            in error and "--overwrite" in error and "Traceback" not in error)
    assert error.count("\n") == 1
    assert {name: os.stat(out / name).st_mtime_ns for name in files_in(out)} == stamps
    cmr.main(["--raw-dir", str(raw), "--out-dir", str(out), "--overwrite"])
    assert [v["case"] for v in read_manifest(out)["volumes"]] == ["patient0_C0", "patient1_C0",
                                                                  "patient2_C0"]
    # removed: with --overwrite the outputs of the deleted case do not survive
    os.remove(raw / "patient0_C0.nii.gz")
    os.remove(raw / "patient0_C0_manual.nii.gz")
    with pytest.raises(ValueError, match="raw file removed: patient0_C0.nii.gz"):
        cmr.preprocess_cmr(str(raw), str(out))
    paths = cmr.preprocess_cmr(str(raw), str(out), overwrite=True)
    assert len(paths) == 4 and files_in(out) == TWO_VOLUMES
    # changed: new content under the same name
    write_noisy_cmr_pair(raw, "patient2", seed=3)
    with pytest.raises(ValueError, match=r"raw file changed: patient2_C0.nii.gz \(\d+ -> \d+ bytes\)"):
        cmr.preprocess_cmr(str(raw), str(out))


def test_same_size_edit_route_change_and_missing_manifest_are_refused(tmp_path, monkeypatch):
    raw, out = tmp_path / "raw", tmp_path / "out"
    image, label = make_mr_volume((200, 500))
    write_nifti(image, str(raw / "patient1_C0.nii"), MR_SPACING)     # uncompressed raw files
    write_nifti(label, str(raw / "patient1_C0_manual.nii"), MR_SPACING)
    cmr.preprocess_cmr(str(raw), str(out))
    image[1, 30, 30] += 1                       # one voxel: same size, other bytes
    write_nifti(image, str(raw / "patient1_C0.nii"), MR_SPACING)
    with pytest.raises(ValueError, match=r"raw file changed: patient1_C0.nii \(same size, "
                                         r"different sha256\)"):
        cmr.preprocess_cmr(str(raw), str(out))
    cmr.preprocess_cmr(str(raw), str(out), overwrite=True)
    monkeypatch.setattr(cmr, "TARGET_SPACING", (1.0, 1.0, 7.99))
    with pytest.raises(ValueError, match=r"route parameter target_spacing_xyz: \[1.25, 1.25, 7.99\] "
                                         r"-> \[1.0, 1.0, 7.99\]"):
        cmr.preprocess_cmr(str(raw), str(out))
    monkeypatch.undo()
    (out / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(ValueError, match=f"cannot read the pre-processing manifest .*{MANIFEST_NAME}"):
        cmr.preprocess_cmr(str(raw), str(out))
    os.remove(out / MANIFEST_NAME)
    with pytest.raises(ValueError, match=r"holds pre-processed volumes \(.*image_0.nii.gz and 1 more\) "
                                         f"but no {MANIFEST_NAME}"):
        cmr.preprocess_cmr(str(raw), str(out))


def test_interrupted_run_resumes_only_the_missing_volume(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "out"
    write_noisy_cmr_pair(raw, "patient1", seed=1)
    write_noisy_cmr_pair(raw, "patient2", seed=2)
    cmr.preprocess_cmr(str(raw), str(out))
    kept = os.stat(out / "image_0.nii.gz").st_mtime_ns
    os.remove(out / "image_1.nii.gz")             # as if killed before the last image
    cmr.preprocess_cmr(str(raw), str(out))
    assert os.stat(out / "image_0.nii.gz").st_mtime_ns == kept
    assert files_in(out) == TWO_VOLUMES


def test_reordering_is_reported_as_such():
    def volume(*paths):
        return {"raw": {"image": [{"path": p, "size": 1, "sha256": p} for p in paths]}}
    old = [volume("a.nii"), volume("b.nii")]
    assert raw_differences(old, [volume("b.nii"), volume("a.nii")]) == [
        "volume 0 came from ['a.nii'], now from ['b.nii']",
        "volume 1 came from ['b.nii'], now from ['a.nii']"]
    assert raw_differences(old, old) == []


def test_truncated_png_mask_is_named_in_one_line(tmp_path, capfd):
    raw, out = tmp_path / "raw", tmp_path / "out"
    write_chaos_patient(raw, 1)
    mask = raw / "1" / "T2SPIR" / "Ground" / "IMG-0002-00004.png"
    truncate(str(mask), os.path.getsize(mask) // 2)
    with pytest.raises(SystemExit) as exit_info:
        chaos.main(["--raw-dir", str(raw), "--out-dir", str(out)])
    assert exit_info.value.code == 2   # a user error: one line, exit status 2
    error = capfd.readouterr().err
    assert error.endswith(f"error: mask {mask} is truncated or not a PNG file (it does not end "
                          "with the IEND chunk)\n")
    assert error.count("\n") == 1      # nothing from libpng
    assert files_in(out) == []


# ----------------------------------------------------------------------------- label geometry

def write_mirrored_x(array, path, spacing, origin=(-40.0, 25.0, 12.0), direction=DIRECTION):
    """Write `array` stored mirrored along x with a header that says so: every voxel keeps its
    world position (what another tool may legitimately write)."""
    d = np.asarray(direction, dtype=np.float64).reshape(3, 3)
    nx = array.shape[2]
    new_origin = np.asarray(origin) + d @ np.array([(nx - 1) * spacing[0], 0.0, 0.0])
    d[:, 0] *= -1
    write_nifti(np.ascontiguousarray(array[:, :, ::-1]), path, spacing, tuple(new_origin), tuple(d.ravel()))


def test_sabs_label_stored_mirrored_is_reoriented_and_recorded(sabs_run, tmp_path):
    raw, out, _ = sabs_run
    mirrored_raw, mirrored_out = tmp_path / "raw", tmp_path / "out"
    shutil.copytree(raw, mirrored_raw)
    _, label = make_sabs_volume(180)
    write_mirrored_x(label, str(mirrored_raw / "label" / "label0001.nii.gz"), SABS_SPACING)
    sabs.preprocess_sabs(str(mirrored_raw), str(mirrored_out))
    for name in ("label_0.nii.gz", "label_1.nii.gz", "image_0.nii.gz"):
        np.testing.assert_array_equal(read(str(mirrored_out / name))[0], read(str(out / name))[0])
    volumes = read_manifest(mirrored_out)["volumes"]
    assert volumes[0]["notes"] == ["label: stored with other axes (x, y, z -> -x, y, z): reoriented onto "
                                   "its image's grid"]
    assert "notes" not in volumes[1]
    # A re-run keeps the finished volumes, and their notes.
    sabs.preprocess_sabs(str(mirrored_raw), str(mirrored_out))
    assert read_manifest(mirrored_out)["volumes"][0]["notes"] == volumes[0]["notes"]


@pytest.mark.parametrize("spacing, origin, message", [
    ((1.4, 0.8, 2.5), (-40.0, 25.0, 12.0), r"spacing \(1\.4, 0\.8, 2\.5\) vs \(0\.7, 0\.8, 2\.5\)"),
    (SABS_SPACING, (-30.0, 25.0, 12.0), r"origin \(-30\.0, 25\.0, 12\.0\) vs \(-40\.0, 25\.0, 12\.0\)"),
])
def test_a_raw_label_on_another_grid_fails_before_writing(sabs_run, tmp_path, spacing, origin, message):
    raw, _, _ = sabs_run
    bad_raw, out = tmp_path / "raw", tmp_path / "out"
    shutil.copytree(raw, bad_raw)
    _, label = make_sabs_volume(220)
    write_nifti(label, str(bad_raw / "label" / "label0003.nii.gz"), spacing, origin)
    with pytest.raises(ValueError, match=r"label .*label0003\.nii\.gz does not lie on the voxel grid of its "
                                         r"image .*img0003\.nii\.gz \(" + message):
        sabs.preprocess_sabs(str(bad_raw), str(out))
    assert files_in(out) == []


def test_cmr_label_stored_mirrored_gives_the_same_output(tmp_path):
    image, label = make_mr_volume((200, 500, 600))
    outputs = {}
    for kind in ("plain", "mirrored"):
        raw, out = tmp_path / kind / "raw", tmp_path / kind / "out"
        write_nifti(image, str(raw / "patient1_C0.nii.gz"), MR_SPACING)
        label_path = str(raw / "patient1_C0_manual.nii.gz")
        (write_mirrored_x if kind == "mirrored" else write_nifti)(label, label_path, MR_SPACING)
        cmr.preprocess_cmr(str(raw), str(out))
        outputs[kind] = read(str(out / "label_0.nii.gz"))[0]
    assert not np.array_equal(read(str(tmp_path / "mirrored" / "raw" / "patient1_C0_manual.nii.gz"))[0], label)
    np.testing.assert_array_equal(outputs["mirrored"], outputs["plain"])


# ----------------------------------------------------------------------------- the release's precision

def release_mr_steps(image: sitk.Image, new_spacing) -> np.ndarray:
    """The release notebooks' MRI steps written out from scratch (reference for the tests
    below): the integer array clipped in numpy with `array[array > p] = p`, put back on the
    image's own geometry, resampled with SimpleITK's linear ResampleImageFilter in its pixel
    type, then cropped to 256 x 256 around the centre."""
    array = sitk.GetArrayFromImage(image)
    top = float(np.percentile(array, 99.5))
    array[array > top] = top
    clipped = sitk.GetImageFromArray(array)
    clipped.CopyInformation(image)
    resampler = sitk.ResampleImageFilter()
    resampler.SetInterpolator(sitk.sitkLinear)
    resampler.SetOutputDirection(clipped.GetDirection())
    resampler.SetOutputOrigin(clipped.GetOrigin())
    resampler.SetOutputSpacing(new_spacing)
    factor = np.array(clipped.GetSpacing()) * 1.0 / np.array(new_spacing)
    resampler.SetSize([int(n + 1) for n in np.array(clipped.GetSize()) * factor])
    resampled = sitk.GetArrayFromImage(resampler.Execute(clipped))
    out = np.full((resampled.shape[0], 256, 256), resampled.min(), dtype=resampled.dtype)
    rows, cols = resampled.shape[1:]
    r0, c0 = rows // 2 - 128, cols // 2 - 128
    rs, cs = slice(max(r0, 0), min(r0 + 256, rows)), slice(max(c0, 0), min(c0 + 256, cols))
    out[:, rs.start - r0:rs.stop - r0, cs.start - c0:cs.stop - c0] = resampled[:, rs, cs]
    return out


def just_below_integers(image: sitk.Image, new_spacing) -> int:
    """How many resampled values of `image` (interpolated in double) lie less than 1e-6 below
    an integer: where truncation depends on the last bits of the geometry."""
    resampled = sitk.GetArrayFromImage(sitk.Resample(
        sitk.Cast(image, sitk.sitkFloat64), [int(n + 1) for n in np.array(image.GetSize()) * (
            np.array(image.GetSpacing()) / np.array(new_spacing))],
        sitk.Transform(), sitk.sitkLinear, image.GetOrigin(), new_spacing, image.GetDirection(), 0.0,
        sitk.sitkFloat64))
    gap = np.ceil(resampled) - resampled
    return int(np.count_nonzero((gap > 0) & (gap < 1e-6)))


def test_integer_nifti_route_truncates_as_the_release_voxel_for_voxel(tmp_path):
    """An int16 NIfTI with an oblique direction: its sform (float32 products of spacing and
    direction) and its pixdim give spacings that differ in the 8th digit. The release reads the
    header with SimpleITK (spacing from pixdim); resampling on the other spacing put some
    interpolated values a rounding error below an integer, which truncated one grey level low."""
    rng = np.random.default_rng(0)
    array = rng.normal(300, 80, (6, 200, 200)).clip(0, 2000).astype(np.int16)
    oblique = np.array([[0.9998, 0.0199987, 0.0], [-0.0199987, 0.9998, 0.0], [0.0, 0.0, 1.0]])
    u, _, vt = np.linalg.svd(oblique)
    image_path, label_path = str(tmp_path / "p1_C0.nii.gz"), str(tmp_path / "p1_C0_manual.nii.gz")
    write_nifti(array, image_path, (1.54, 1.54, 8.0), origin=(-150.3, -120.7, 33.1),
                direction=tuple((u @ vt).ravel()))
    write_nifti(np.zeros(array.shape, np.uint16), label_path, (1.54, 1.54, 8.0), origin=(-150.3, -120.7, 33.1),
                direction=tuple((u @ vt).ravel()))
    spacing = (1.25, 1.25, 7.99)
    reference = release_mr_steps(sitk.ReadImage(image_path), spacing)
    assert just_below_integers(sitk.ReadImage(image_path), spacing) > 0   # the case is exercised
    ours = cmr.preprocess_cmr_volume(image_path, label_path).image
    assert ours.dtype == reference.dtype == np.int16
    assert ours.shape == reference.shape
    assert np.count_nonzero(ours != reference) == 0


def test_integer_dicom_route_truncates_as_the_release_voxel_for_voxel(tmp_path):
    """A CHAOS-format patient (uint16 DICOM, 10 slices 7.7 mm apart, so the series spacing is
    7.699999999999999): the CLI's integer route equals the release's steps on the series read
    as int16, row-flipped, with its geometry after the release's NIfTI round trip (the spacing
    through float32: 7.6999998, so every output slice interpolates a hair past an input slice),
    voxel for voxel."""
    rng = np.random.default_rng(1)
    volume = rng.normal(300, 80, (10, 128, 128)).clip(0, 2000).astype(np.uint16)
    names = [f"IMG-0002-{10 - i:05d}" for i in range(10)]
    t2 = tmp_path / "raw" / "1" / "T2SPIR"
    write_dicom_series(volume, str(t2 / "DICOM_anon"), (1.5, 1.4), 7.7, [n + ".dcm" for n in names])
    os.makedirs(t2 / "Ground")
    for name in names:
        cv2.imwrite(str(t2 / "Ground" / f"{name}.png"), np.zeros((128, 128), np.uint8))
    patient = chaos.find_chaos_patients(str(tmp_path / "raw"))[0]
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(chaos.series_files(patient)[0])
    reader.SetOutputPixelType(sitk.sitkInt16)
    series = reader.Execute()
    flipped, geometry = flip_rows(sitk.GetArrayFromImage(series), Geometry.of(series))
    release_input = geometry.apply(sitk.GetImageFromArray(flipped))
    release_input.SetSpacing(tuple(float(np.float32(s)) for s in release_input.GetSpacing()))
    assert just_below_integers(release_input, chaos.TARGET_SPACING) > 0
    reference = release_mr_steps(release_input, chaos.TARGET_SPACING)
    ours = chaos.preprocess_chaos_patient(patient).image
    assert ours.shape == reference.shape
    assert np.count_nonzero(ours.astype(np.int64) != reference) == 0
