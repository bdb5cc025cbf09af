"""The synthetic dataset: layout, determinism, per-subject variation, organs usable for
1-shot episodes, no single-threshold shortcut, CLI and the optional supervoxel step."""
import json
import os

import numpy as np
import pytest
import SimpleITK as sitk

from fafnet.synthetic import __main__ as cli
from fafnet.synthetic.generate import MANIFEST, generate_dataset, generate_subject

TARGET_ORGANS = (1, 2, 3, 6)            # spleen, right kidney, left kidney, liver
SABS_IDS_USED = {0, 1, 2, 3, 6, 7, 8, 9}


@pytest.fixture(scope="module")
def default_subjects():
    """Three subjects at the default size (129 x 129, 28 slices)."""
    return [generate_subject(0, i) for i in range(3)]


def longest_run(values):
    best = run = 0
    for ok in values:
        run = run + 1 if ok else 0
        best = max(best, run)
    return best


def best_threshold_dice(image, label, organ):
    """Best Dice of `organ` against any one-sided threshold (x > t or x < t) over the body."""
    body = image > 0
    bins = np.linspace(0, 256, 257)
    inside = np.histogram(image[body & (label == organ)], bins)[0]
    outside = np.histogram(image[body & (label != organ)], bins)[0]
    total = inside.sum()
    best = 0.0
    for pred_in, pred_out in ((np.cumsum(inside[::-1])[::-1], np.cumsum(outside[::-1])[::-1]),
                              (np.cumsum(inside), np.cumsum(outside))):
        best = max(best, np.max(2 * pred_in / (pred_in + pred_out + total)))
    return best


def test_default_subjects_have_every_organ_for_one_shot_episodes(default_subjects):
    for image, label, geometry in default_subjects:
        assert image.shape == label.shape == (28, 129, 129)
        assert image.dtype == np.float32 and label.dtype == np.uint8
        assert set(np.unique(label)) == SABS_IDS_USED
        for organ in TARGET_ORGANS + (7,):
            # at least 2 consecutive slices with >= 200 foreground pixels (TrainDataset's min)
            assert longest_run((label == organ).sum(axis=(1, 2)) >= 200) >= 2, organ
        assert 0 <= image.min() and image.max() <= 255
        # air around the body (borders) is 0 and unlabelled
        assert not image[:, :2].any() and not label[:, :2].any() and not label[:, :, :2].any()
        sx, sy, sz = geometry.spacing
        assert sx == sy and 2.0 < sx < 3.2 and 5.0 < sz < 8.5  # like pre-processed SABS at 129


def test_no_single_threshold_segments_an_organ(default_subjects):
    image, label, _ = default_subjects[0]
    for organ in TARGET_ORGANS:
        assert best_threshold_dice(image, label, organ) < 0.75, organ
    # the organs' typical intensities overlap: liver's and spleen's central ranges intersect
    liver, spleen = image[label == 6], image[label == 1]
    assert np.percentile(liver, 10) < np.percentile(spleen, 90)
    assert np.percentile(spleen, 10) < np.percentile(liver, 90)


def test_subjects_vary_in_position_size_and_intensity(default_subjects):
    centroids, volumes, means = [], [], []
    for image, label, _ in default_subjects:
        liver = np.argwhere(label == 6)
        centroids.append(liver.mean(axis=0))
        volumes.append(len(liver))
        means.append(image[label == 6].mean())
    assert np.ptp(np.array(centroids), axis=0).max() > 1.0
    assert np.ptp(volumes) > 0.03 * np.mean(volumes)
    assert np.ptp(means) > 1.0


def test_subjects_are_deterministic_and_independent_of_the_subject_count(tmp_path):
    small = generate_dataset(str(tmp_path / "a"), n_subjects=2, size=40, n_slices=6, seed=3,
                             progress=False)
    larger = generate_dataset(str(tmp_path / "b"), n_subjects=3, size=40, n_slices=6, seed=3,
                              progress=False)
    other_seed = generate_dataset(str(tmp_path / "c"), n_subjects=1, size=40, n_slices=6, seed=4,
                                  progress=False)
    read = lambda path: sitk.GetArrayFromImage(sitk.ReadImage(path))  # noqa: E731
    for path_a, path_b in zip(small, larger):
        assert os.path.basename(path_a) == os.path.basename(path_b)
        assert np.array_equal(read(path_a), read(path_b))
    assert not np.array_equal(read(small[0]), read(other_seed[0]))
    assert not np.array_equal(read(larger[0]), read(larger[2]))   # subjects differ


def test_dataset_layout_and_header(tmp_path):
    out = tmp_path / "synthetic"
    paths = generate_dataset(str(out), n_subjects=2, size=48, n_slices=8, seed=0, progress=False)
    assert paths == [str(out / "image_0.nii.gz"), str(out / "label_0.nii.gz"),
                     str(out / "image_1.nii.gz"), str(out / "label_1.nii.gz")]
    image = sitk.ReadImage(paths[0])
    label = sitk.ReadImage(paths[1])
    assert image.GetSize() == label.GetSize() == (48, 48, 8)
    assert image.GetSpacing() == label.GetSpacing()
    assert image.GetOrigin() == label.GetOrigin()
    assert 0.65 * 448 / 48 <= image.GetSpacing()[0] <= 0.85 * 448 / 48
    with open(out / MANIFEST) as f:
        assert json.load(f)["seed"] == 0


def test_cli_rerun_keeps_subjects_and_refuses_other_settings(tmp_path, capsys):
    out = tmp_path / "cli"
    args = ["--out", str(out), "--subjects", "2", "--size", "32", "--slices", "5"]
    cli.main(args)
    target = out / "image_1.nii.gz"
    os.utime(target, (1, 1))
    cli.main(args + ["--subjects", "3"])            # adds subject 2, keeps 0 and 1
    assert os.path.getmtime(target) == 1
    assert sorted(os.listdir(out)) == sorted(
        [f"{kind}_{i}.nii.gz" for kind in ("image", "label") for i in range(3)] + [MANIFEST])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:     # one line naming why, exit status 2
        cli.main(args + ["--seed", "1"])
    error = capsys.readouterr().err
    assert exit_info.value.code == 2 and "made with other settings" in error and error.count("\n") == 1
    cli.main(args + ["--seed", "1", "--overwrite"])
    assert os.path.getmtime(target) > 1
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    assert "--supervoxels" in capsys.readouterr().out


@pytest.mark.parametrize("bad", [dict(n_subjects=0), dict(size=8), dict(n_slices=2),
                                 dict(supervoxel_min_size=0)])
def test_bad_arguments_are_named(tmp_path, bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        generate_dataset(str(tmp_path / "x"), **bad)
    assert not (tmp_path / "x").exists()


def test_supervoxels_on_request(tmp_path):
    try:
        import fafnet.supervoxels.generate  # noqa: F401 (only probing)
    except ImportError as err:
        pytest.skip(f"supervoxel module not importable: {err}")
    out = tmp_path / "sv"
    paths = generate_dataset(str(out), n_subjects=1, size=40, n_slices=6, supervoxels=True,
                             supervoxel_min_size=50, progress=False)
    supervoxel_path = out / "supervoxels_50" / "superpix-MIDDLE_0.nii.gz"
    assert paths[-1] == str(supervoxel_path)
    supervoxels = sitk.GetArrayFromImage(sitk.ReadImage(str(supervoxel_path)))
    image = sitk.GetArrayFromImage(sitk.ReadImage(paths[0]))
    assert supervoxels.shape == image.shape
    assert supervoxels.max() >= 2                      # several supervoxels inside the body
    assert supervoxels[:, 0, 0].max() == 0             # air outside the body is background
