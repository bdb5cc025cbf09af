"""The third probe's input cases (issue 28): comparisons and curves across folds, runs and
data, the data identity of results.json, gapped DICOM series, repeated segment flags,
upper-case and folder volume names, unclear errors and exit statuses, implausible segmented
volumes, and the CHAOS route's float32 spacing."""
import json
import os
import shutil

import cv2
import numpy as np
import pytest
import SimpleITK as sitk
import torch

from fafnet.cli import preprocess as preprocess_cli
from fafnet.cli import results as utils
from fafnet.cli import segment as segment_cli
from fafnet.evaluation import results as tables
from fafnet.inference import segment as segment_engine
from fafnet.io.layout import DatasetLayout
from fafnet.io.nifti import Geometry, write_volume
from fafnet.io.scans import read_scan
from fafnet.preprocessing import chaost2 as chaos
from fafnet.preprocessing.manifest import read_manifest
from fafnet.runtime.snapshots import SNAPSHOT_FORMAT
from fafnet.runtime.training_data import evaluation_data_record
from tests.helpers import N_VOLUMES

NAMES = {1: "spleen", 6: "liver"}


# ----------------------------------------------------------------------------- results.json files


def protocol(fold=0, **changes) -> dict:
    record = {"model": "fafnet", "dataset": "SABS", "setting": 1, "setting2_protocol": None, "group": None,
              "test_classes": [1, 6], "eval_fold": fold, "supp_idx": [2], "n_part": 3, "image_size": [33, 33],
              "resample_in_plane": None, "n_volumes": 10, "checkpoint": "runs/train/1/snapshots/final.pth",
              "checkpoint_step": 4, "training": {"n_steps": 4, "seed": 1, "eval_fold": fold},
              "pretrained_weights": None, "preprocessing": None, "code": {"commit": "abc", "dirty": False}}
    record.update(changes)
    return record


def data_identity(liver_label_hash="a" * 64) -> dict:
    labels = [{"name": "label_0.nii.gz", "sha256": "0" * 64}, {"name": "label_1.nii.gz", "sha256": liver_label_hash}]
    return {"format": 1, "labels": labels, "digest": liver_label_hash[::-1]}


def write_results(folder, dice=(0.5, 0.75), **changes) -> str:
    os.makedirs(folder, exist_ok=True)
    classes = {str(c): {"name": NAMES[c], "dice_mean": d, "iou_mean": d / 2, "n_query_volumes": 2}
               for c, d in zip((1, 6), dice)}
    record = {"protocol": protocol(**changes), "skipped": [], "classes": classes,
              "mean_dice": float(np.mean(dice)), "mean_iou": float(np.mean(dice)) / 2}
    with open(os.path.join(folder, "results.json"), "w", encoding="utf-8") as f:
        json.dump(record, f)
    return str(folder)


def one_line_error(capsys) -> str:
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "Traceback" not in error, error
    return error


# ----------------------------------------------------------------------------- 1. compare


@pytest.mark.parametrize("field, value", [("eval_fold", 1), ("image_size", [49, 49]), ("supp_idx", [0]),
                                          ("preprocessing", {"route": "SABS"})])
def test_compare_refuses_runs_of_another_fold_size_or_protocol(tmp_path, capsys, field, value):
    run = write_results(tmp_path / "run")
    other = write_results(tmp_path / "other", **{field: value})
    assert utils.main(["compare", run, other]) == 2
    assert f"differ in '{field}'" in one_line_error(capsys)


def test_compare_refuses_other_data_and_accepts_a_trained_against_an_untrained_run(tmp_path, capsys):
    trained = write_results(tmp_path / "trained", (0.75, 0.5), data=data_identity())
    relabelled = write_results(tmp_path / "relabelled", (0.25, 0.5), data=data_identity("b" * 64))
    assert utils.main(["compare", trained, relabelled]) == 2
    error = one_line_error(capsys)
    assert "different data ('data': label_1.nii.gz: sha256 aaaaaaaaaaaa... vs bbbbbbbbbbbb...)" in error
    # The checkpoint, its step, its training and the model are what a comparison compares.
    untrained = write_results(tmp_path / "untrained", (0.25, 0.125), checkpoint="untrained", checkpoint_step=0,
                              training=None, pretrained_weights="resnet101.pth", data=data_identity())
    assert utils.main(["compare", trained, untrained]) == 0
    assert "| spleen | 75.00 | 25.00 | +50.00 |" in capsys.readouterr().out
    older = write_results(tmp_path / "older", (0.25, 0.125), checkpoint="untrained")   # no data identity
    assert utils.main(["compare", trained, older]) == 0
    assert "records no data identity" in capsys.readouterr().err


# ----------------------------------------------------------------------------- 2. curve


def snapshot(run: str, step: int) -> str:
    return f"{run}/snapshots/step_{step:07d}.pth"


def test_curve_refuses_other_folds_training_runs_and_protocols(tmp_path, capsys):
    steps = [write_results(tmp_path / f"s{step}", (0.1 * step, 0.1), checkpoint=snapshot("runs/train/1", step),
                           checkpoint_step=step) for step in (2, 4)]
    assert utils.main(["curve", *steps]) == 0
    out = capsys.readouterr().out
    assert "checkpoint snapshots of training run runs/train/1" in out and "SABS fold 0," in out
    assert "| 2 | 20.00 | 10.00 | 15.00 |" in out
    cases = {"eval_fold": dict(eval_fold=1, training={"n_steps": 4, "seed": 1, "eval_fold": 1}),
             "n_part": dict(n_part=4),
             "checkpoint": dict(checkpoint=snapshot("runs/train/2", 6)),
             "training": dict(training={"n_steps": 4, "seed": 2, "eval_fold": 0})}
    for field, changes in cases.items():
        other = write_results(tmp_path / field, **{"checkpoint": snapshot("runs/train/1", 6), "checkpoint_step": 6,
                                                   **changes})
        assert utils.main(["curve", *steps, other]) == 2, field
        error = one_line_error(capsys)
        assert f"'{field}'" in error, error
    again = write_results(tmp_path / "again", checkpoint=snapshot("runs/train/1", 4), checkpoint_step=4)
    assert utils.main(["curve", *steps, again]) == 2
    assert "step 4 appears twice" in one_line_error(capsys)


# ----------------------------------------------------------------------------- 3. data identity


def test_data_identity_names_every_label_file_and_changes_with_a_relabelled_copy(phantom, tmp_path):
    from fafnet.episodes.evaluation import TestDataset

    def record(data_dir):
        dataset = TestDataset(data_dir, dataset="SYNTHETIC", eval_fold=0, n_volumes=N_VOLUMES, test_classes=[1, 6])
        return evaluation_data_record(dataset)

    original = record(phantom)
    assert [e["name"] for e in original["labels"]] == [f"label_{i}.nii.gz" for i in range(N_VOLUMES)]
    other_fold = TestDataset(phantom, dataset="SYNTHETIC", eval_fold=1, n_volumes=N_VOLUMES, test_classes=[1, 6])
    assert evaluation_data_record(other_fold) == original   # one identity for every fold of a table
    copy = str(tmp_path / "copy")
    shutil.copytree(phantom, copy)
    assert record(copy) == original                        # the same files: the same identity
    label = sitk.ReadImage(os.path.join(copy, "label_7.nii.gz"))   # fold 2: liver relabelled as spleen
    array = sitk.GetArrayFromImage(label)
    array[array == 6] = 1
    relabelled = sitk.GetImageFromArray(array)
    relabelled.CopyInformation(label)
    sitk.WriteImage(relabelled, os.path.join(copy, "label_7.nii.gz"))
    changed = record(copy)
    assert changed["digest"] != original["digest"]
    assert [e["name"] for e in changed["labels"] if e not in original["labels"]] == ["label_7.nii.gz"]


def test_fold_table_refuses_runs_on_other_data_and_warns_on_runs_without_identity(tmp_path, capsys):
    fold0 = write_results(tmp_path / "f0", fold=0, data=data_identity())
    fold1 = write_results(tmp_path / "f1", fold=1, data=data_identity("b" * 64))
    with pytest.raises(ValueError, match=r"different data \('data': label_1\.nii\.gz"):
        tables.aggregate_folds([fold0, fold1])
    assert utils.main(["aggregate", fold0, fold1]) == 2
    assert "f1" in one_line_error(capsys)
    same = write_results(tmp_path / "same", fold=1, data=data_identity())
    assert tables.aggregate_folds([fold0, same])[1][0][0] == 0
    older = write_results(tmp_path / "older", fold=2)
    assert utils.main(["aggregate", fold0, same, older]) == 0
    assert f"warning: {older}{os.sep}results.json: records no data identity" in capsys.readouterr().err


# ----------------------------------------------------------------------------- 4. gapped DICOM


def write_dicom_slices(volume, folder, spacing_xy, heights, names) -> None:
    """(z, rows, cols) uint16 `volume` as one DICOM series, slice i at height heights[i] (mm)
    in file names[i]."""
    os.makedirs(folder, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    uid = "1.2.826.0.1.3680043.8.498.28"
    for i, (height, name) in enumerate(zip(heights, names)):
        image = sitk.GetImageFromArray(volume[i])
        image.SetSpacing(spacing_xy)
        for tag, value in {"0008|0060": "MR", "0008|0008": "ORIGINAL\\PRIMARY", "0020|000d": uid + ".1",
                           "0020|000e": uid + ".2", "0008|0018": f"{uid}.3.{i + 1}",
                           "0020|0037": "1\\0\\0\\0\\1\\0", "0020|0032": f"-50\\-40\\{height:.4f}",
                           "0020|0013": str(i + 1)}.items():
            image.SetMetaData(tag, value)
        writer.SetFileName(os.path.join(folder, name))
        writer.Execute(image)


def test_a_dicom_series_with_a_missing_slice_is_refused_naming_where(tmp_path):
    volume = np.arange(12 * 8 * 8, dtype=np.uint16).reshape(12, 8, 8)
    names = [f"slice{i:02d}.dcm" for i in range(12)]
    whole, gapped = str(tmp_path / "whole"), str(tmp_path / "gapped")
    write_dicom_slices(volume, whole, (1.0, 1.0), [2.0 * i for i in range(12)], names)
    assert read_scan(whole).array.shape == (12, 8, 8)
    assert read_scan(whole).geometry.spacing[2] == pytest.approx(2.0)
    keep = [i for i in range(12) if i != 5]
    write_dicom_slices(volume[keep], gapped, (1.0, 1.0), [2.0 * i for i in keep], [names[i] for i in keep])
    with pytest.raises(ValueError) as error:
        read_scan(gapped)
    message = str(error.value)
    assert message.startswith(f"{gapped}: the DICOM series is not evenly spaced: a gap")
    assert "between slice positions 8 and 12 mm (slice04.dcm and slice06.dcm)" in message
    assert "expected spacing 2 mm, found 4 mm" in message and "\n" not in message


# ----------------------------------------------------------------------------- 5. repeated segment flags


def test_repeated_segment_flags_add_up(tmp_path):
    args = segment_cli.build_parser().parse_args([
        "--checkpoint", "c.pth", "--support-image", "s.nii.gz", "--support-mask", "m.nii.gz", "--out", "out",
        "--query", "a.nii.gz", "--query", "b.nii.gz", "c.nii.gz", "--label", "1", "--label", "6",
        "--reference", "ra.nii.gz", "--reference", "rb.nii.gz", "rc.nii.gz"])
    assert args.query == ["a.nii.gz", "b.nii.gz", "c.nii.gz"] and args.label == [1, 6]
    assert args.reference == ["ra.nii.gz", "rb.nii.gz", "rc.nii.gz"]
    args.out = str(tmp_path / "out")
    segment_engine.check_outputs(args)            # one reference per query: no error


# ----------------------------------------------------------------------------- 6. volume names


def touch_volumes(folder, numbers) -> str:
    os.makedirs(folder, exist_ok=True)
    for number in numbers:
        for kind in ("image", "label"):
            open(os.path.join(folder, f"{kind}_{number}.nii.gz"), "wb").close()
    return str(folder)


@pytest.mark.parametrize("name", ["image_5.NII.GZ", "label_5.Nii.gz", "image_5.NII"])
def test_an_upper_case_suffix_is_an_error_naming_the_file(tmp_path, name):
    folder = touch_volumes(tmp_path / "data", range(5))
    open(os.path.join(folder, name), "wb").close()
    with pytest.raises(ValueError, match=rf"{name.replace('.', '[.]')}: a volume file must be named image_<i>"):
        DatasetLayout(folder)


def test_a_folder_named_like_a_volume_is_reported_as_a_folder(tmp_path):
    folder = touch_volumes(tmp_path / "data", range(3))
    os.makedirs(os.path.join(folder, "image_99.nii.gz"))
    with pytest.raises(ValueError, match=r"image_99\.nii\.gz is a folder, not a volume file"):
        DatasetLayout(folder)


# ----------------------------------------------------------------------------- 7. unclear errors


@pytest.mark.parametrize("content, expected", [
    ("null", "holds null, not an evaluation's results"),
    ('{"protocol": {}, "classes": {}, "mean_dice": null}', "its protocol lacks 'dataset'"),
    ('{"protocol": null, "classes": {}, "mean_dice": null}', "its protocol is null"),
])
def test_a_results_json_without_results_is_one_line_naming_it(tmp_path, capsys, content, expected):
    (tmp_path / "results.json").write_text(content)
    for command in (["show", str(tmp_path)], ["aggregate", str(tmp_path)], ["curve", str(tmp_path)]):
        assert utils.main(command) == 2
        error = one_line_error(capsys)
        assert f"{tmp_path}{os.sep}results.json: {expected}" in error, error


def test_a_nan_dice_is_refused_naming_the_file(tmp_path, capsys):
    good = write_results(tmp_path / "good", fold=0)
    bad = write_results(tmp_path / "bad", (float("nan"), 0.5), fold=1)
    assert utils.main(["aggregate", good, bad]) == 2
    error = one_line_error(capsys)
    assert f"{bad}{os.sep}results.json: class 1 (spleen) has dice_mean nan, not a finite number" in error
    assert "nan ± nan" not in capsys.readouterr().out


def test_a_corrupt_run_json_is_reported_as_unreadable(tmp_path, capsys):
    run = tmp_path / "train" / "1"
    run.mkdir(parents=True)
    (run / "run.json").write_text('{"status": "COMPL')
    (tmp_path / "train" / "2").mkdir()
    assert utils.main(["runs", str(tmp_path / "train")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "\tunreadable run.json\t" in lines[0] and "\tno run.json\t" in lines[1]
    assert utils.main(["runs", str(run)]) == 0                    # the run folder itself
    assert "\tunreadable run.json\t" in capsys.readouterr().out


def test_commands_name_themselves_as_started(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("sys.argv", ["/usr/local/bin/fafnet-results"])
    with pytest.raises(SystemExit) as done:
        utils.main(["--help"])
    assert done.value.code == 0 and capsys.readouterr().out.startswith("usage: fafnet-results ")
    monkeypatch.setattr("sys.argv", ["/usr/local/bin/fafnet-segment"])
    status = segment_cli.main(["--checkpoint", "c.pth", "--support-image", "s.nii.gz", "--support-mask",
                               "m.nii.gz", "--query", "a.nii.gz", "b.nii.gz", "--reference", "ra.nii.gz",
                               "--out", str(tmp_path / "out")])
    assert status == 2
    assert one_line_error(capsys).startswith("fafnet-segment: error: --reference gives 1 file(s) for 2")
    monkeypatch.setattr("sys.argv", ["segment.py"])
    assert "usage: segment.py " in segment_cli.build_parser().format_usage()


def test_an_unreadable_checkpoint_names_the_option_once(tmp_path):
    from fafnet.runtime.checkpoints import read_checkpoint
    from fafnet.runtime.snapshots import SnapshotError

    path = tmp_path / "garbage.pth"
    path.write_bytes(b"not a torch file")
    with pytest.raises(SnapshotError) as error:
        read_checkpoint(str(path))
    assert str(error.value).startswith(f"checkpoint={str(path)!r}: {path} cannot be read")


@pytest.mark.parametrize("argv", [
    ["CHAOST2", "--raw-dir", "{tmp}/missing", "--out-dir", "{tmp}/out"],
    ["SABS", "--raw-dir", "{tmp}/missing", "--out-dir", "{tmp}/out"],
    ["supervoxels", "--data-dir", "{tmp}/missing", "--min-size", "10"],
    ["superpixels", "--data-dir", "{tmp}/missing"],
    ["synthetic", "--out", "{tmp}/out", "--subjects", "0"],
])
def test_preprocess_user_errors_exit_with_status_2(tmp_path, capsys, argv):
    with pytest.raises(SystemExit) as done:
        preprocess_cli.main([a.format(tmp=tmp_path) for a in argv])
    assert done.value.code == 2
    one_line_error(capsys)


# ----------------------------------------------------------------------------- 8. implausible volumes

SIZE, DEPTH = 33, 8
GEOMETRY = Geometry((1.25, 1.25, 7.7), (-20.0, -20.0, 10.0), (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))


def disc_scan(folder, name: str) -> tuple:
    """An image with a bright disc of label 6 on slices 2..5, and its label map."""
    rows, cols = np.mgrid[:SIZE, :SIZE]
    disc = (rows - 16) ** 2 + (cols - 16) ** 2 <= 25
    image = np.random.default_rng(0).normal(100.0, 5.0, (DEPTH, SIZE, SIZE)).astype(np.float32)
    label = np.zeros((DEPTH, SIZE, SIZE), dtype=np.uint8)
    image[2:6][:, disc] += 140.0
    label[2:6][:, disc] = 6
    paths = str(folder / f"{name}.nii.gz"), str(folder / f"{name}_labels.nii.gz")
    write_volume(image, GEOMETRY, paths[0])
    write_volume(label, GEOMETRY, paths[1])
    return paths


class WholeSlices:
    """Stands in for the network: every query pixel is foreground (an implausible organ)."""

    def predict(self, support_images, support_masks, query_images, batch_size=None):
        return torch.ones(query_images.shape[0], *query_images.shape[-2:])


class SupportMask(WholeSlices):
    """Predicts the support's own mask on every query slice (a plausible organ)."""

    def predict(self, support_images, support_masks, query_images, batch_size=None):
        return support_masks[:1].expand(query_images.shape[0], -1, -1).clone()


@pytest.mark.parametrize("model, warned", [(WholeSlices(), True), (SupportMask(), False)])
def test_segment_warns_when_a_volume_is_implausible(tmp_path, caplog, monkeypatch, model, warned):
    image, label = disc_scan(tmp_path, "support")
    query, _ = disc_scan(tmp_path, "query")
    checkpoint = str(tmp_path / "light.pth")
    torch.save({"format": SNAPSHOT_FORMAT, "kind": "weights", "step": 2, "image_size": [SIZE, SIZE],
                "config": {"dataset": "SYNTHETIC", "data_dir": str(tmp_path)}, "model": {}}, checkpoint)
    monkeypatch.setattr(segment_engine, "load_model", lambda checkpoint, device, channels_last: model)
    out = tmp_path / "out"
    assert segment_cli.main(["--checkpoint", checkpoint, "--support-image", image, "--support-mask", label,
                             "--query", query, "--out", str(out), "--device", "cpu"]) == 0
    with open(out / "query.json", encoding="utf-8") as f:
        record = json.load(f)
    support_ml = 4 * 81 * float(np.prod(GEOMETRY.spacing)) / 1000    # the disc: 81 pixels on 4 slices
    found = [w for w in record["warnings"] if "label 6 is predicted at" in w]
    assert bool(found) == warned
    if warned:
        predicted = record["labels"]["6"]["volume_ml"]
        assert f"but the support mask's label 6 holds {support_ml:.1f} mL (more than 3x apart)" in found[0]
        assert f"predicted at {predicted:.1f} mL" in found[0] and predicted > 3 * support_ml
        assert "label 6 is predicted at" in caplog.text     # the log says it too
    assert segment_engine.VOLUME_WARNING_FACTOR == 3.0
    assert "3x larger or smaller" in segment_cli.build_parser().format_help()


# ----------------------------------------------------------------------------- 9. CHAOS spacing


def test_chaos_route_resamples_with_the_float32_spacing_of_the_releases_nifti_round_trip(tmp_path):
    """Pixel spacing 1.62 (float32: 1.6200000047683716) and slices 7.7 mm apart: the default
    output equals the route fed the float32 spacing, voxel for voxel, and differs from the
    route fed the exact spacing on the integer arithmetic's truncations."""
    volume = np.random.default_rng(1).normal(300, 80, (10, 128, 128)).clip(0, 2000).astype(np.uint16)
    names = [f"IMG-{i:05d}" for i in range(10)]
    t2 = tmp_path / "raw" / "1" / "T2SPIR"
    write_dicom_slices(volume, str(t2 / "DICOM_anon"), (1.62, 1.62), [7.7 * i for i in range(10)],
                       [n + ".dcm" for n in names])
    os.makedirs(t2 / "Ground")
    for name in names:
        cv2.imwrite(str(t2 / "Ground" / f"{name}.png"), np.zeros((128, 128), np.uint8))
    patient = chaos.find_chaos_patients(str(tmp_path / "raw"))[0]
    image, label, geometry = chaos.read_chaos_patient(patient)
    assert geometry.spacing[0] == 1.62 and float(np.float32(1.62)) != 1.62
    rounded = Geometry(tuple(float(np.float32(s)) for s in geometry.spacing), geometry.origin, geometry.direction)
    ours = chaos.preprocess_chaos_patient(patient).image
    release = chaos.preprocess_chaos_arrays(image, label, rounded, dicom_spacing="exact").image
    exact = chaos.preprocess_chaos_arrays(image, label, geometry, dicom_spacing="exact").image
    assert np.count_nonzero(ours != release) == 0
    assert np.count_nonzero(ours != exact) > 0
    assert np.abs(ours.astype(np.int64) - exact).max() == 1      # one grey level, where truncation flips
    out = tmp_path / "out"
    chaos.main(["--raw-dir", str(tmp_path / "raw"), "--out-dir", str(out)])
    assert read_manifest(str(out))["route"]["parameters"]["dicom_spacing"] == "float32"
