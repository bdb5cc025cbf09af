"""segment.py, the inference command for new scans, on tiny phantoms.

The phantom (written here): 8 slices of 33 x 33 (65 x 65 for the geometry test), organs 1
and 6 as discs on slices 2..5. One real untrained checkpoint checks that --query-range with
the true range reproduces the evaluation's Dice; the other end-to-end tests replace the
network by `IntensityModel` (foreground = bright voxels), whose known answer isolates what
the command itself does: pre-processing, pairing, cleaning and the way back to the scan's
own grid.
"""
import json
import os
import re
import sys

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from fafnet.cli import segment
from fafnet.inference import segment as segment_engine
from fafnet.io.nifti import Geometry, write_volume
from fafnet.io.resample import slice_positions_on
from fafnet.preprocessing.routes import apply_route, choose_preprocessing, scan_warnings
from fafnet.datasets.specs import get_dataset_spec
from fafnet.inference.pairing import (combine_labels, largest_component, range_pairing, relative_pairing,
                                slices_in_range)
from fafnet.runtime.snapshots import SNAPSHOT_FORMAT, SnapshotWriter
from fafnet.models import build_model
from tests.helpers import run_test, truncate, write_chaos_patient, write_dicom_series

SIZE, DEPTH, ORGAN_SLICES = 33, 8, range(2, 6)
IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
GEOMETRY = Geometry((1.25, 1.25, 7.7), (-20.0, -20.0, 10.0), IDENTITY)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One thread: the tests share 2 busy cores, where two threads run the encoder slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def phantom(index: int, size: int = SIZE, organs=(1, 6), blob: bool = False):
    """(image float32, label uint8) [DEPTH, size, size]: discs of label 1 (grey 180) and 6
    (grey 240) on ORGAN_SLICES, shifted by the index; with `blob`, a bright 3 x 3 square
    beside organ 6 on slice 7 (an unlabelled structure)."""
    rng = np.random.default_rng(index)
    scale = size / SIZE
    rows, cols = np.mgrid[:size, :size]
    image = rng.normal(100.0, 5.0, (DEPTH, size, size)).astype(np.float32)
    label = np.zeros((DEPTH, size, size), dtype=np.uint8)
    for class_id, (cy, cx), grey in ((1, (10, 10), 180.0), (6, (21, 20), 240.0)):
        if class_id not in organs:
            continue
        disc = (rows - scale * (cy + index % 2)) ** 2 + (cols - scale * cx) ** 2 <= (scale * 5) ** 2
        for z in ORGAN_SLICES:
            label[z][disc] = class_id
            image[z][disc] += grey - 100.0
    if blob:
        image[7, 28:31, 26:29] = 240.0
    return image, label


def light_snapshot(path: str, config: dict, image_size) -> str:
    """A snapshot file with a config and no weights: enough for the tests whose model is
    replaced (IntensityModel) or that fail before the model is built."""
    torch.save({"format": SNAPSHOT_FORMAT, "kind": "weights", "step": 2, "image_size": list(image_size),
                "config": config, "model": {}}, path)
    return path


class IntensityModel:
    """Stands in for FAFNet: foreground where the z-scored query is bright and within `radius`
    pixels of the support mask's centre (the phantoms' structures keep their place from scan to
    scan). Records the support masks' areas it was given."""

    def __init__(self, threshold: float = 1.0, radius: float = 8.0):
        self.threshold, self.radius, self.support_areas = threshold, radius, []

    def predict(self, support_images, support_masks, query_images, batch_size=None):
        self.support_areas.append(int(support_masks.sum()))
        rows, cols = torch.nonzero(support_masks[0], as_tuple=True)
        height, width = query_images.shape[-2:]
        y, x = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
        near = (y - rows.float().mean()) ** 2 + (x - cols.float().mean()) ** 2 <= self.radius ** 2
        return ((query_images[:, 0] > self.threshold) & near).float()


@pytest.fixture
def intensity_model(monkeypatch):
    model = IntensityModel()
    monkeypatch.setattr(segment_engine, "load_model", lambda checkpoint, device, channels_last: model)
    return model


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A SYNTHETIC dataset folder of 5 volumes (fold 0 holds volumes 0 and 1) and an untrained
    33 x 33 checkpoint trained, by its config, on that folder."""
    root = tmp_path_factory.mktemp("segment")
    data_dir = str(root / "data")
    for index in range(5):
        image, label = phantom(index)
        write_volume(image, GEOMETRY, os.path.join(data_dir, f"image_{index}.nii.gz"))
        write_volume(label, GEOMETRY, os.path.join(data_dir, f"label_{index}.nii.gz"))
    torch.manual_seed(0)
    model = build_model("fafnet", (SIZE, SIZE))   # predicts about a third of each slice
    config = {"dataset": "SYNTHETIC", "image_size": [SIZE, SIZE], "resample_in_plane": None, "data_dir": data_dir}
    snapshot = SnapshotWriter(str(root / "run"), config, (SIZE, SIZE)).save_weights(2, model)
    return root, data_dir, snapshot


def run_segment(capsys, *argv) -> tuple:
    """(exit status, stdout, stderr) of segment.main(argv), run as `python segment.py` (the
    name its messages carry)."""
    saved, sys.argv = sys.argv, ["segment.py"]
    try:
        status = segment.main([str(a) for a in argv])
    finally:
        sys.argv = saved
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def read_json(out, name):
    with open(os.path.join(out, f"{name}.json"), encoding="utf-8") as f:
        return json.load(f)


# ----------------------------------------------------------------------------- the benchmark's numbers


@pytest.fixture(scope="module")
def dataset_evaluation(dataset):
    """test.py's protocol on the dataset folder, support volume 0, query volume 1: (its
    classes' results, its run folder)."""
    root, data_dir, snapshot = dataset
    run = run_test({"data_dir": data_dir, "runs_dir": str(root / "runs"), "image_size": [SIZE, SIZE],
                    "test_classes": [1, 6], "device": "cpu", "checkpoint": snapshot, "save_figures": False})
    with open(os.path.join(run.observers[0].dir, "results.json"), encoding="utf-8") as f:
        return json.load(f)["supports"]["0"]["classes"], run.observers[0].dir


@pytest.mark.parametrize("label", [1, 6])
def test_query_range_from_the_true_range_gives_the_evaluations_dice(dataset, dataset_evaluation, label, tmp_path,
                                                                    capsys):
    _, data_dir, snapshot = dataset
    out = tmp_path / "out"
    status, stdout, _ = run_segment(
        capsys, "--checkpoint", snapshot, "--support-image", f"{data_dir}/image_0.nii.gz",
        "--support-mask", f"{data_dir}/label_0.nii.gz", "--query", f"{data_dir}/image_1.nii.gz",
        "--reference", f"{data_dir}/label_1.nii.gz", "--query-range", "2:6", "--label", label, "--out", out)
    assert status == 0
    record = read_json(out, "image_1")
    classes, run_dir = dataset_evaluation
    entry, expected = record["labels"][str(label)], classes[str(label)]
    assert entry["pairing"] == "range" and entry["query_range"] == [2, 6] and entry["largest_component"] is False
    assert entry["support_slices"] == expected["support_slices"] == [2, 4, 5]
    assert [run["query_slices"] for run in entry["runs"]] == [[2, 2], [3, 3], [4, 5]]   # chunk_bounds(4)
    dice = expected["per_volume"][0]["dice"]
    assert entry["dice"] == dice
    assert f"label {label}: " in stdout and f"Dice {dice:.4f}" in stdout
    assert record["preprocessing"]["query"]["applied"] == "none"   # SYNTHETIC has no route
    assert record["checkpoint"]["step"] == 2 and record["checkpoint"]["dataset"] == "SYNTHETIC"
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "image_1_labels.nii.gz")))
    name = {1: "spleen", 6: "liver"}[label]
    evaluated = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(run_dir, "predictions",
                                                                   f"query_1_class_{label}_{name}.nii.gz")))
    np.testing.assert_array_equal(labels, evaluated)              # voxel for voxel
    assert 0 < np.count_nonzero(labels) < len(ORGAN_SLICES) * SIZE * SIZE   # neither empty nor everything
    assert set(np.unique(labels)) <= {0, label} and not labels[[0, 1, 6, 7]].any()   # only the range
    truth = sitk.GetArrayFromImage(sitk.ReadImage(f"{data_dir}/label_1.nii.gz")) == label
    assert 2 * np.sum((labels == label) & truth) / (np.sum(labels == label) + truth.sum()) == pytest.approx(dice)
    voxel_ml = np.prod(GEOMETRY.spacing) / 1000
    assert entry["volume_ml"] == pytest.approx(entry["voxels"] * voxel_ml)
    assert entry["voxels"] == np.count_nonzero(labels == label)
    assert entry["slices"] == sorted(set(np.flatnonzero(labels.any(axis=(1, 2))).tolist()))
    assert (out / "image_1_overview.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------- without a range


def test_no_range_pairs_by_relative_position_and_keeps_the_largest_component(dataset, intensity_model,
                                                                             tmp_path, capsys):
    root, data_dir, _ = dataset
    snapshot = light_snapshot(str(tmp_path / "light.pth"), {"dataset": "SYNTHETIC", "data_dir": data_dir},
                              (SIZE, SIZE))
    image, label = phantom(3, organs=(6,), blob=True)
    write_volume(image, GEOMETRY, str(tmp_path / "query.nii.gz"))
    intensity_model.radius = 14.0     # reaches the blob beside organ 6
    common = ["--checkpoint", snapshot, "--support-image", f"{data_dir}/image_0.nii.gz", "--support-mask",
              f"{data_dir}/label_0.nii.gz", "--query", tmp_path / "query.nii.gz", "--label", 6, "--probabilities"]
    status, _, _ = run_segment(capsys, *common, "--out", tmp_path / "on")
    assert status == 0
    entry = read_json(tmp_path / "on", "query")["labels"]["6"]
    # Query slice k of 8 takes support slice k, or the nearest of the support's slices 2..5
    # that hold label 6.
    assert entry["pairing"] == "relative" and entry["support_slices"] == [2, 3, 4, 5]
    assert entry["runs"] == [{"support_slice": 2, "query_slices": [0, 2]}, {"support_slice": 3, "query_slices": [3, 3]},
                             {"support_slice": 4, "query_slices": [4, 4]}, {"support_slice": 5, "query_slices": [5, 7]}]
    cleaned = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "on" / "query_labels.nii.gz")))
    np.testing.assert_array_equal(cleaned, label)      # organ 6 as drawn; the blob is gone
    assert entry["largest_component"] is True and entry["voxels_removed_by_cleaning"] == 9
    probability = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "on" / "query_prob_label6.nii.gz")))
    assert probability.dtype == np.float32 and probability[7, 29, 27] == 1.0   # before the cleaning
    status, _, _ = run_segment(capsys, *common, "--largest-component", "off", "--out", tmp_path / "off")
    kept = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "off" / "query_labels.nii.gz")))
    assert status == 0 and np.count_nonzero(kept[7]) == 9 and np.array_equal(kept[:7], cleaned[:7])
    assert min(intensity_model.support_areas) > 0    # every support slice given held the label


# ----------------------------------------------------------------------------- geometry


def rotation(axis, degrees) -> tuple:
    axis = np.asarray(axis, dtype=np.float64) / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    angle = np.radians(degrees)
    matrix = np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k
    return tuple(float(v) for v in matrix.ravel())


def world_centroid(path: str, label: int) -> np.ndarray:
    """The centre of `label`'s voxels in world coordinates, by SimpleITK."""
    image = sitk.ReadImage(path)
    z, y, x = np.nonzero(sitk.GetArrayFromImage(image) == label)
    return np.array(image.TransformContinuousIndexToPhysicalPoint([x.mean(), y.mean(), z.mean()]))


def flipped_x(array: np.ndarray, geometry: Geometry):
    """The same volume stored with its x axis reversed, the header saying so."""
    direction = np.asarray(geometry.direction).reshape(3, 3).copy()
    last = np.asarray(geometry.origin) + direction[:, 0] * geometry.spacing[0] * (array.shape[2] - 1)
    direction[:, 0] *= -1
    return array[:, :, ::-1].copy(), Geometry(geometry.spacing, tuple(last), tuple(direction.ravel()))


def test_an_oblique_query_comes_back_aligned_on_its_own_grid(dataset, intensity_model, tmp_path, capsys):
    _, data_dir, _ = dataset
    # Trained on 33 x 33 after resampling in-plane: the 65 x 65 scans go through that grid.
    snapshot = light_snapshot(str(tmp_path / "light.pth"), {"dataset": "SYNTHETIC", "resample_in_plane": [SIZE, SIZE]},
                              (SIZE, SIZE))
    support, support_label = phantom(0, size=65)
    support_geometry = Geometry((0.625, 0.625, 7.7), (-20.0, -20.0, 10.0), IDENTITY)
    write_volume(support, support_geometry, str(tmp_path / "support.nii.gz"))
    write_volume(*flipped_x(support_label, support_geometry), str(tmp_path / "support_mask.nii.gz"))
    query, truth = phantom(1, size=65)
    oblique = Geometry((0.7, 0.6, 6.0), (31.0, -12.5, 140.0), rotation((1, 1, 1), 40))
    write_volume(query, oblique, str(tmp_path / "query.nii.gz"))
    write_volume(truth, oblique, str(tmp_path / "truth.nii.gz"))
    status, _, _ = run_segment(capsys, "--checkpoint", snapshot, "--support-image", tmp_path / "support.nii.gz",
                               "--support-mask", tmp_path / "support_mask.nii.gz", "--query", tmp_path / "query.nii.gz",
                               "--reference", tmp_path / "truth.nii.gz", "--out", tmp_path / "out")
    assert status == 0
    written, original = sitk.ReadImage(str(tmp_path / "out" / "query_labels.nii.gz")), sitk.ReadImage(
        str(tmp_path / "query.nii.gz"))
    assert written.GetSize() == original.GetSize() == (65, 65, DEPTH)
    for field in ("GetSpacing", "GetOrigin", "GetDirection"):
        np.testing.assert_allclose(getattr(written, field)(), getattr(original, field)(), atol=1e-5)
    record = read_json(tmp_path / "out", "query")
    network_spacing = record["preprocessing"]["network_grid"]["spacing_xyz"]
    assert network_spacing[:2] == pytest.approx([0.7 * 65 / 33, 0.6 * 65 / 33])
    for label in (1, 6):
        distance = np.linalg.norm(world_centroid(str(tmp_path / "out" / "query_labels.nii.gz"), label)
                                  - world_centroid(str(tmp_path / "truth.nii.gz"), label))
        assert distance < 0.5, (label, distance)     # mm; the network's pixels are 1.2-1.4 mm
        assert record["labels"][str(label)]["dice"] > 0.8
    assert any("reoriented" in note for note in record["support"]["notes"])


# ----------------------------------------------------------------------------- DICOM and the routes


def test_a_dicom_series_goes_through_the_chaos_route_and_back(intensity_model, tmp_path, capsys):
    snapshot = light_snapshot(str(tmp_path / "chaos.pth"), {"dataset": "CHAOST2", "resample_in_plane": [SIZE, SIZE]},
                              (SIZE, SIZE))
    rows, cols = np.mgrid[:200, :200]
    volume = np.full((5, 200, 200), 40, dtype=np.uint16)
    truth = np.zeros(volume.shape, dtype=np.uint8)
    disc = (rows - 60) ** 2 + (cols - 130) ** 2 <= 30 ** 2      # off-centre: a flip would move it
    volume[1:4][:, disc], truth[1:4][:, disc] = 400, 4
    write_dicom_series(volume, str(tmp_path / "support"), (1.6, 1.6), 7.7, [f"s{i}.dcm" for i in range(5)])
    write_dicom_series(volume, str(tmp_path / "query"), (1.6, 1.6), 7.7, [f"q{i}.dcm" for i in range(5)])
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(tmp_path / "query")))
    series = reader.Execute()
    write_volume(truth, Geometry.of(series), str(tmp_path / "mask.nii.gz"))
    status, _, _ = run_segment(capsys, "--checkpoint", snapshot, "--support-image", tmp_path / "support",
                               "--support-mask", tmp_path / "mask.nii.gz", "--query", tmp_path / "query",
                               "--reference", tmp_path / "mask.nii.gz", "--out", tmp_path / "out")
    assert status == 0
    record = read_json(tmp_path / "out", "query")
    applied = record["preprocessing"]["query"]
    assert record["read_as"] == "dicom" and record["dicom_modality"] == "MR"
    assert applied["applied"] == "route" and "(200, 200)" in applied["reason"]
    assert applied["route"]["name"] == "mri_clip_resample_crop" and applied["route"]["parameters"]["row_flip"] is True
    assert record["preprocessing"]["arithmetic"]["value"] == "release" and record["warnings"] == []
    written = sitk.ReadImage(str(tmp_path / "out" / "query_labels.nii.gz"))
    assert written.GetSize() == series.GetSize()
    for field in ("GetSpacing", "GetOrigin", "GetDirection"):
        np.testing.assert_allclose(getattr(written, field)(), getattr(series, field)(), atol=1e-4)
    distance = np.linalg.norm(world_centroid(str(tmp_path / "out" / "query_labels.nii.gz"), 4)
                              - world_centroid(str(tmp_path / "mask.nii.gz"), 4))
    assert distance < 5.0                            # mm; the network's pixels are 9.7 mm here
    assert record["labels"]["4"]["dice"] > 0.8 and record["labels"]["4"]["slices"] == [1, 2, 3]


def test_routes_on_arrays_equal_the_pre_processing_clis(tmp_path):
    from fafnet.preprocessing import chaost2 as chaos
    from fafnet.io.raw import read_raw_image
    from fafnet.preprocessing import sabs
    write_chaos_patient(tmp_path / "chaos", 1)
    patient = chaos.find_chaos_patients(str(tmp_path / "chaos"))[0]
    cli = chaos.preprocess_chaos_patient(patient)
    image, label, geometry = chaos.read_chaos_patient(patient)
    ours = apply_route("CHAOST2", image, geometry, label, row_flip=True)
    np.testing.assert_array_equal(ours.image, cli.image.astype(np.float32))
    np.testing.assert_array_equal(ours.label, cli.label)
    assert ours.geometry == cli.geometry
    rng = np.random.default_rng(0)
    hu = rng.uniform(-1000, 400, (3, 96, 96)).astype(np.int16)
    ct_label = (hu > 200).astype(np.uint8) * 6
    ct_geometry = Geometry((0.8, 0.8, 3.0), (-40.0, 12.0, -5.0), IDENTITY)
    write_volume(hu, ct_geometry, str(tmp_path / "img0001.nii.gz"))
    write_volume(ct_label, ct_geometry, str(tmp_path / "label0001.nii.gz"))
    cli = sabs.preprocess_sabs_volume(str(tmp_path / "img0001.nii.gz"), str(tmp_path / "label0001.nii.gz"))
    ours = apply_route("SABS", *read_raw_image(str(tmp_path / "img0001.nii.gz")))   # array, geometry as read
    np.testing.assert_array_equal(ours.image, cli.image)
    assert ours.label is None and ours.geometry == cli.geometry


def test_auto_takes_the_routes_output_grid_for_pre_processed():
    cmr, sabs = get_dataset_spec("CMR"), get_dataset_spec("SABS")
    community = Geometry((1.2499999, 1.25, 7.9899997), (0.0, 0.0, 0.0), IDENTITY)   # as the files store it
    choice = choose_preprocessing("auto", cmr, np.zeros((12, 256, 256)), community, "release", False)
    assert choice.applied == "none" and choice.route is None
    raw = Geometry((1.4, 1.4, 8.0), (0.0, 0.0, 0.0), IDENTITY)
    choice = choose_preprocessing("auto", cmr, np.zeros((12, 256, 256)), raw, "release", False)
    assert choice.applied == "route"
    assert "spacing (1.4, 1.4, 8) mm is not the route's (1.25, 1.25, 7.99)" in choice.reason
    assert choose_preprocessing("auto", cmr, np.zeros((12, 240, 256)), community, "release", False).applied == "route"
    windowed = np.full((4, 257, 257), 255.0)
    assert choose_preprocessing("auto", sabs, windowed, raw, "release", False).applied == "none"
    hu = np.full((4, 257, 257), -1000.0)
    choice = choose_preprocessing("auto", sabs, hu, raw, "release", False)
    assert choice.applied == "route" and "outside the CT window's output range" in choice.reason
    assert choose_preprocessing("route", sabs, windowed, raw, "release", False).applied == "route"
    choice = choose_preprocessing("route", get_dataset_spec("SYNTHETIC"), windowed, raw, "release", False)
    assert choice.applied == "none" and "no pre-processing route" in choice.reason


def test_warnings_say_how_a_scan_differs_from_the_training_data():
    ct = np.full((10, 64, 64), -1000.0)
    ct[:, 16:48, 16:48] = 40.0
    geometry = Geometry((0.7, 0.7, 2.5), (0.0, 0.0, 0.0), IDENTITY)
    lines = scan_warnings(get_dataset_spec("CMR"), ct, geometry, "route")
    assert len(lines) == 2
    assert lines[0].startswith("its intensities look like CT (1st percentile -1000")
    assert lines[0].endswith("but the checkpoint was trained on MR (CMR)")
    assert lines[1] == "spacing along z is 2.5 mm, 4.0x finer than the 10 mm typical of raw CMR scans"
    mr = np.abs(ct) / 10
    assert scan_warnings(get_dataset_spec("SABS"), mr, Geometry((0.7, 0.7, 2.5), (0, 0, 0), IDENTITY), "route",
                         "MR") == ["its DICOM Modality tag is MR, but the checkpoint was trained on CT (SABS)",
                                   "its intensities look unlike CT (1st percentile 4; CT holds air near -1000 HU), "
                                   "but the checkpoint was trained on CT (SABS)"]
    assert scan_warnings(get_dataset_spec("CMR"), mr, Geometry((1.25, 1.25, 7.99), (0, 0, 0), IDENTITY), "none") == []


# ----------------------------------------------------------------------------- pairing rules


def test_range_and_relative_pairing_known_answers():
    pairing = range_pairing([3, 4, 5, 6, 7, 8, 9], [10, 11, 12, 13, 14])
    assert pairing.support_slices == [4, 6, 8]                   # int(f * 7) for f = 1/6, 1/2, 5/6
    assert pairing.runs == [(0, 0, 1), (1, 1, 3), (2, 3, 5)]     # linspace(0, 5, 4) cast to int
    # 4 query slices over a 12-slice support whose label is on slices 6, 7, 9: relative
    # positions 1.5, 4.5, 7.5, 10.5 -> slices 1, 4, 7, 10 -> nearest holding it 6, 6, 7, 9.
    pairing = relative_pairing([6, 7, 9], (0, 12), [20, 21, 22, 23])
    assert pairing.support_slices == [6, 7, 9] and pairing.runs == [(0, 0, 2), (1, 2, 3), (2, 3, 4)]
    # Six query slices on a 6-slice support labelled on 2 and 4: slice 3 (u = 3.5) lies
    # between the two and goes to the lower.
    pairing = relative_pairing([2, 4], (0, 6), list(range(6)))
    assert pairing.support_slices == [2, 4] and pairing.runs == [(0, 0, 4), (1, 4, 6)]


def test_slice_ranges_map_through_the_geometry():
    original = Geometry((1.0, 1.0, 3.0), (0.0, 0.0, 0.0), IDENTITY)
    resampled = Geometry((1.0, 1.0, 7.5), (0.0, 0.0, 0.0), IDENTITY)   # z resampled, as the MRI route does
    positions = slice_positions_on(resampled, (5, 4, 4), original)
    np.testing.assert_allclose(positions, [0.0, 2.5, 5.0, 7.5, 10.0])
    assert slices_in_range(positions, 2, 8) == [1, 2]         # 2.5 rounds up to 3, 7.5 to 8 (excluded)
    assert slices_in_range(positions, 3, 9) == [1, 2, 3]
    assert slices_in_range(slice_positions_on(original, (4, 4, 4), original), 1, 3) == [1, 2]


def test_largest_component_and_overlaps_known_answers():
    mask = np.zeros((3, 6, 6), dtype=bool)
    mask[0:2, 0:2, 0:2] = True            # 8 voxels
    mask[2, 2, 2] = True                  # touches the first only at a corner across slices: joins it
    mask[0, 5, 5] = mask[1, 5, 4] = True  # 2 voxels apart
    kept, removed = largest_component(mask)
    assert removed == 2 and kept.sum() == 9 and not kept[0, 5, 5]
    assert largest_component(np.zeros((2, 2, 2), dtype=bool))[1] == 0
    one, two = np.array([[[True, True, False]]]), np.array([[[True, False, True]]])
    p1, p2 = np.array([[[0.9, 0.6, 0.0]]]), np.array([[[0.7, 0.0, 0.8]]])
    np.testing.assert_array_equal(combine_labels([1, 2], [one, two], [p1, p2], np.uint8), [[[1, 1, 2]]])
    np.testing.assert_array_equal(combine_labels([1, 2], [one, two], [p2, p1], np.uint8), [[[2, 1, 2]]])


def test_query_range_syntax():
    spec = segment_engine.parse_range("12:30")
    assert (spec.query, spec.label, spec.z0, spec.z1) == (None, None, 12, 30)
    assert (lambda s: (s.query, s.label, s.z0, s.z1))(segment_engine.parse_range("1=:30")) == (None, 1, None, 30)
    assert (lambda s: (s.query, s.label, s.z0, s.z1))(segment_engine.parse_range("2:6=4:")) == (2, 6, 4, None)
    assert (lambda s: (s.query, s.label, s.z0, s.z1))(segment_engine.parse_range("0:4:9")) == (0, None, 4, 9)
    specs = [segment_engine.parse_range(t) for t in ("0:9", "1=2:5", "1:0:3", "1:1=6:7")]
    assert segment_engine.range_for(specs, 0, 1).text == "1=2:5" and segment_engine.range_for(specs, 1, 1).text == "1:1=6:7"
    assert segment_engine.range_for(specs, 1, 2).text == "1:0:3" and segment_engine.range_for(specs, 0, 2).text == "0:9"
    for bad, message in (("12-30", "expected \\[QUERY:\\]\\[LABEL=\\]Z0:Z1"), ("5:5", "Z1 \\(5\\) must be greater"),
                         ("a=1:2", "non-negative integers"), ("1:2:3:4", "expected"), ("=1:2", "expected"),
                         ("0:1:2=3:4", "expected"), ("1=2=3:4", "expected")):
        with pytest.raises(ValueError, match=message):
            segment_engine.parse_range(bad)
    with pytest.raises(ValueError, match="give the same query and label twice"):
        segment_engine.check_ranges([segment_engine.parse_range("1=2:3"), segment_engine.parse_range("1=4:5")], 1, [1])


# ----------------------------------------------------------------------------- errors


@pytest.fixture(scope="module")
def bad_inputs(dataset, tmp_path_factory):
    """Files for the error cases (BAD/ in the messages), beside the dataset folder (DATA/)."""
    _, data_dir, _ = dataset
    folder = tmp_path_factory.mktemp("bad")
    light_snapshot(str(folder / "synthetic.pth"), {"dataset": "SYNTHETIC", "data_dir": data_dir}, (SIZE, SIZE))
    _, label = phantom(0)
    write_volume(label, Geometry((1.0, 1.25, 7.7), GEOMETRY.origin, IDENTITY), str(folder / "other_grid.nii.gz"))
    write_volume(np.zeros_like(label), GEOMETRY, str(folder / "empty.nii.gz"))
    write_volume(label[:, :20], GEOMETRY, str(folder / "small_label.nii.gz"))
    write_volume(label, Geometry(GEOMETRY.spacing, (0.0, 0.0, 0.0), IDENTITY), str(folder / "moved.nii.gz"))
    write_volume(phantom(0, size=65)[0], GEOMETRY, str(folder / "big.nii.gz"))
    (folder / "not_dicom").mkdir()
    (folder / "not_dicom" / "notes.txt").write_text("no images here")
    series = np.full((3, 40, 40), 40, dtype=np.uint16)
    write_dicom_series(series, str(folder / "damaged"), (1.5, 1.5), 7.7, ["a.dcm", "b.dcm", "c.dcm"])
    truncate(str(folder / "damaged" / "b.dcm"), os.path.getsize(folder / "damaged" / "b.dcm") // 2)
    torch.save({"conv.weight": torch.zeros(1)}, str(folder / "foreign.pth"))
    light_snapshot(str(folder / "sabs.pth"), {"dataset": "SABS"}, (257, 257))
    ct_geometry = Geometry((0.8, 0.8, 3.0), (0.0, 0.0, 0.0), IDENTITY)
    ct = np.full((2, 400, 400), -1000, dtype=np.int16)
    ct[:, 100:300, 100:300] = 40
    write_volume(ct, ct_geometry, str(folder / "ct400.nii.gz"))
    write_volume((ct > 0).astype(np.uint8), ct_geometry, str(folder / "ct400_mask.nii.gz"))
    return folder, data_dir


ERRORS = [
    ({"--support-mask": "BAD/other_grid.nii.gz"},
     r"other_grid\.nii\.gz does not lie on the voxel grid of its image .*image_0\.nii\.gz \(spacing"),
    ({"--support-mask": "BAD/empty.nii.gz"}, r"--support-mask .*empty\.nii\.gz holds no label \(every voxel is 0\)"),
    ({"--label": "7"}, r"--label 7 does not occur in --support-mask .*label_0\.nii\.gz \(labels present: 1, 6\)"),
    ({"--query": "BAD/big.nii.gz"},
     r"big\.nii\.gz: after pre-processing \(none\) its in-plane size is \(65, 65\), but checkpoint .*synthetic\.pth "
     r"\(SYNTHETIC\) takes \(33, 33\) and was trained without resample_in_plane"),
    ({"--checkpoint": "BAD/sabs.pth", "--support-image": "BAD/ct400.nii.gz", "--support-mask": "BAD/ct400_mask.nii.gz",
      "--query": "BAD/ct400.nii.gz"},
     r"ct400\.nii\.gz: after pre-processing \(route\) its in-plane size is \(193, 193\), but checkpoint .*sabs\.pth "
     r"\(SABS\) takes \(257, 257\)"),
    ({"--query": "BAD/not_dicom"}, r"not_dicom holds no DICOM files"),
    ({"--query": "BAD/damaged"}, r"damaged: the series has 2 files but the folder holds 3 DICOM files; not in the "
                                 r"series \(unreadable, truncated or from another series\): b\.dcm"),
    ({"--checkpoint": "BAD/missing_run"}, r"--checkpoint='.*missing_run': no such file or folder"),
    ({"--checkpoint": "BAD/foreign.pth"}, r"--checkpoint .*foreign\.pth is not a training snapshot of this project"),
    ({"--reference": "BAD/small_label.nii.gz"},
     r"small_label\.nii\.gz has shape \(8, 20, 33\) but its image .*image_1\.nii\.gz has shape \(8, 33, 33\)"),
    ({"--reference": "BAD/moved.nii.gz"},
     r"moved\.nii\.gz does not lie on the voxel grid of its image .*image_1\.nii\.gz \(origin"),
    ({"--query-range": "3:12"}, r"--query-range '3:12': .*image_1\.nii\.gz has 8 slices \(0\.\.7\), so Z0:Z1 must"),
    ({"--query-range": "1:1=2:6"}, r"--query-range '1:1=2:6': query 1 does not exist"),
    ({"--reference": ["DATA/label_1.nii.gz", "DATA/label_2.nii.gz"]},
     r"--reference gives 2 file\(s\) for 1 --query scan\(s\); give one per query"),
]


@pytest.mark.parametrize("changes, message", ERRORS, ids=[f"error{i}" for i in range(len(ERRORS))])
def test_bad_input_is_one_line_and_writes_nothing(bad_inputs, changes, message, tmp_path, capsys):
    folder, data_dir = bad_inputs
    argv = {"--checkpoint": "BAD/synthetic.pth", "--support-image": "DATA/image_0.nii.gz",
            "--support-mask": "DATA/label_0.nii.gz", "--query": "DATA/image_1.nii.gz", **changes}
    args = []
    for option, values in argv.items():
        values = values if isinstance(values, list) else [values]
        args += [option] + [v.replace("BAD/", f"{folder}/").replace("DATA/", f"{data_dir}/") for v in values]
    out = tmp_path / "out"
    status, _, stderr = run_segment(capsys, *args, "--out", out)
    assert status == 2
    lines = [line for line in stderr.splitlines() if line.startswith("segment.py:")]
    assert len(lines) == 1 and "Traceback" not in stderr
    assert lines[0].startswith("segment.py: error: ") and re.search(message, lines[0]), lines[0]
    assert not out.exists()


def test_command_line_help_and_exit_status(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("sys.argv", ["segment.py", "--checkpoint", str(tmp_path / "none"), "--support-image",
                                     "s.nii.gz", "--support-mask", "m.nii.gz", "--query", "q.nii.gz",
                                     "--out", str(tmp_path / "o")])
    with pytest.raises(SystemExit) as exit:
        segment.cli()
    stderr = capsys.readouterr().err
    assert exit.value.code == 2 and "Traceback" not in stderr
    last = stderr.strip().splitlines()[-1]
    assert last == f"segment.py: error: --checkpoint='{tmp_path / 'none'}': no such file or folder"
    assert not (tmp_path / "o").exists()
    help_text = segment.build_parser().format_help()
    assert "example:" in help_text and "python segment.py --checkpoint runs/train/3" in help_text
    assert "--query-range [QUERY:][LABEL=]Z0:Z1" in help_text
