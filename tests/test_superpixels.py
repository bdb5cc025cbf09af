"""SSL-ALPNet's 2D superpixel pseudo-labels (docs/protocol.md section 16): the per-slice
post-processing by hand, the partition against scikit-image, the files and their lookup, the
`fafnet-preprocess superpixels` command, and training episodes with pseudo_labels="superpixels"."""
import json
import logging
import os
import shutil

import numpy as np
import pytest
import skimage
from skimage.segmentation import felzenszwalb

from fafnet.cli import preprocess
from fafnet.episodes import augment
from fafnet.episodes.training import TrainDataset
from fafnet.io.layout import DatasetLayout
from fafnet.io.nifti import Geometry, read_volume, write_volume
from fafnet.supervoxels import superpixels as sp

Z, H, W = 6, 33, 33
GEOMETRY = Geometry(spacing=(1.25, 1.25, 7.5), origin=(-3.0, 4.0, 10.0),
                    direction=(0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0))


@pytest.fixture(autouse=True)
def no_console_handler_left_behind():
    """The CLI adds a console log handler on the stream pytest captures; later tests must not
    write to that closed stream."""
    logger = logging.getLogger("fafnet")
    handlers, level = list(logger.handlers), logger.level
    yield
    logger.handlers[:], logger.level = handlers, level


# ----------------------------------------------------------------------------- post-processing

def test_body_mask_keeps_the_largest_8_connected_component_with_its_holes_filled():
    image = np.zeros((9, 9))
    image[1:6, 1:6] = 5.0
    image[3, 3] = 0.0                  # a hole: filled
    image[6, 6] = image[7, 7] = 5.0    # touches the block diagonally: same component (8-connected)
    image[0, 8] = image[1, 8] = 5.0    # a smaller separate component: dropped
    expected = np.zeros((9, 9), bool)
    expected[1:6, 1:6] = True
    expected[6, 6] = expected[7, 7] = True
    np.testing.assert_array_equal(sp.body_mask_2d(image, 1e-4), expected)
    # the threshold is strict and on the stored values (CHAOST2's 50.0001 drops a 50)
    assert not sp.body_mask_2d(np.full((3, 3), 50.0), 1e-4 + 50).any()
    assert sp.body_mask_2d(np.full((3, 3), 50.001), 1e-4 + 50).all()


def test_an_empty_slice_keeps_its_empty_mask_and_gets_no_labels():
    empty = np.zeros((H, W), np.float32)
    assert not sp.body_mask_2d(empty, 1e-4).any()
    assert not sp.superpixels_for_slice(empty, min_size=20).any()
    volume = np.zeros((3, H, W), np.float32)
    volume[0, 5:25, 5:25] = 10.0
    labels = sp.superpixels_for_volume(volume, min_size=20)
    assert labels[0].max() >= 1 and not labels[1:].any()


def test_label_zero_moves_to_max_plus_one_outside_is_zero_and_values_are_renumbered_in_order():
    segments = np.array([[0, 0, 3, 3],
                         [5, 5, 3, 8],
                         [5, 0, 8, 12]])
    mask = np.ones_like(segments, bool)
    mask[:, 3] = False                 # 8 loses one pixel, 12 all of it
    # values inside: 3, 5, 8 and 13 (the former 0) -> 1, 2, 3, 4; 12 is gone, no gap is left
    expected = np.array([[4, 4, 1, 0],
                         [2, 2, 1, 0],
                         [2, 4, 3, 0]])
    out = sp.mask_and_renumber(segments, mask)
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, expected)
    # everything inside: the former 0 is the last label, nothing is 0
    np.testing.assert_array_equal(sp.mask_and_renumber(np.array([[0, 2], [7, 2]]), np.ones((2, 2), bool)),
                                  [[3, 1], [2, 1]])
    assert not sp.mask_and_renumber(segments, np.zeros_like(mask)).any()


def test_thresholds_per_dataset():
    assert sp.body_threshold("SABS") == 1e-4 and sp.body_threshold("CHAOST2") == 1e-4 + 50
    assert sp.body_threshold("CMR") == sp.body_threshold(None) == 1e-4
    with pytest.raises(ValueError, match="dataset 'nope' is unknown"):
        sp.body_threshold("nope")


def body_slice(seed: int, dtype=np.float32) -> np.ndarray:
    """A noisy body with two brighter organs and a dark hole on a zero background."""
    rng = np.random.default_rng(seed)
    image = np.zeros((H, W))
    image[3:30, 4:29] = 60 + 25 * rng.random((27, 25))
    image[8:16, 8:18] += 90
    image[18:26, 16:26] += 150
    image[12:14, 22:24] = 0            # a hole inside the body
    return image.astype(dtype)


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two label images cut the pixels into the same groups."""
    pairs = np.unique(np.stack([a.ravel(), b.ravel()]), axis=1)
    return len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == pairs.shape[1]


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int16])
def test_partition_is_scikit_images_felzenszwalb_inside_the_body(dtype):
    image = body_slice(3, dtype)
    ours = sp.superpixels_for_slice(image, min_size=30, sigma=1)
    theirs = felzenszwalb(image, min_size=30, sigma=1)          # called directly, as stored
    body = sp.body_mask_2d(image, 1e-4)
    assert body[12, 22] and not body[0, 0]                      # the hole is filled
    assert not ours[~body].any() and ours[body].min() == 1
    assert same_partition(ours[body], theirs[body])
    # numbered 1..n in the order of felzenszwalb's values, 0 counting as its max + 1
    moved = np.where(theirs == 0, theirs.max() + 1, theirs)[body]
    numbers = np.unique(ours[body])
    np.testing.assert_array_equal(numbers, np.arange(1, len(numbers) + 1))
    firsts = [moved[ours[body] == n][0] for n in numbers]
    assert firsts == sorted(firsts)


def test_defaults_and_a_whole_volume_slice_by_slice():
    volume = np.stack([body_slice(s) for s in range(3)])
    labels = sp.superpixels_for_volume(volume)                  # min_size 400, sigma 1
    for s in range(3):
        np.testing.assert_array_equal(labels[s], sp.superpixels_for_slice(volume[s], 400, 1.0, 1e-4))
        body = sp.body_mask_2d(volume[s], 1e-4)
        assert same_partition(labels[s][body], felzenszwalb(volume[s], min_size=400, sigma=1)[body])


@pytest.mark.parametrize("image, message", [
    (np.zeros((4, 4)), r"must be a non-empty 3D \[Z, H, W\] array, got shape \(4, 4\)"),
    (np.full((1, 4, 4), np.nan), "the image to segment has 16 non-finite voxel"),
    (np.zeros((1, 4, 4), complex), "holds complex128 values"),
])
def test_bad_arrays_and_parameters_are_refused(image, message):
    with pytest.raises(ValueError, match=message):
        sp.superpixels_for_volume(image)
    with pytest.raises(ValueError, match="min_size must be a positive integer"):
        sp.superpixels_for_volume(np.zeros((1, 4, 4)), min_size=0)
    with pytest.raises(ValueError, match="sigma must be"):
        sp.superpixels_for_volume(np.zeros((1, 4, 4)), sigma=-1)


# ----------------------------------------------------------------------------- files, layout, CLI

def body_volume(seed: int, dtype=np.float32) -> np.ndarray:
    volume = np.stack([body_slice(seed * 10 + s, dtype) for s in range(Z)])
    volume[Z - 1] = 0                  # a slice past the data, as SABS's resampling leaves one
    return volume


@pytest.fixture()
def images(tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    write_volume(body_volume(0), GEOMETRY, str(data_dir / "image_0.nii.gz"))
    write_volume(body_volume(2, np.int16), GEOMETRY, str(data_dir / "image_2.nii.gz"))
    return data_dir


def test_files_carry_the_image_geometry_and_the_layout_finds_them(images):
    written = sp.generate_superpixels(str(images), min_size=30, progress=False)
    folder = images / "superpixels_30"
    assert written == [str(folder / "superpix-MIDDLE_0.nii.gz"), str(folder / "superpix-MIDDLE_2.nii.gz")]
    for number, path in zip((0, 2), written):
        labels, geometry = read_volume(path, dtype=None)
        assert geometry == GEOMETRY and labels.dtype == np.int32
        image, _ = read_volume(str(images / f"image_{number}.nii.gz"), dtype=None)
        assert image.dtype == (np.float32 if number == 0 else np.int16)     # used as stored
        np.testing.assert_array_equal(labels, sp.superpixels_for_volume(image, 30))
        assert labels[:Z - 1].max() >= 2 and not labels[Z - 1].any()
    manifest = json.loads((folder / "superpixel_manifest.json").read_text())
    assert manifest["parameters"] == {"min_size": 30, "sigma": 1.0, "scale": 1.0, "body_threshold": 1e-4,
                                      "scikit_image": skimage.__version__}
    assert [v["superpixels"] for v in manifest["volumes"]] == ["superpix-MIDDLE_0.nii.gz", "superpix-MIDDLE_2.nii.gz"]
    layout = DatasetLayout(str(images), require_labels=False)
    assert layout.superpixel_files(30) == {0: written[0], 2: written[1]}
    assert layout.superpixel_path(layout[1], 30) == written[1]
    with pytest.raises(FileNotFoundError, match="supervoxel folder not found"):
        layout.supervoxel_files(30)                      # supervoxels are not superpixels
    with pytest.raises(FileNotFoundError, match="fafnet-preprocess superpixels"):
        layout.superpixel_files(400)
    # the release's place beside the data folder too: ambiguous, for the layout and the writer
    shutil.copytree(folder, images.parent / "superpixels_30")
    with pytest.raises(ValueError, match="superpixels with min size 30 exist in two places"):
        layout.superpixel_dir(30)
    with pytest.raises(ValueError, match="would make the experiments' choice ambiguous"):
        sp.generate_superpixels(str(images), min_size=30, progress=False)


def test_rerun_skips_done_volumes_and_refuses_other_parameters_unless_overwrite(images):
    first = sp.generate_superpixels(str(images), min_size=30, progress=False)
    stamp = os.stat(first[0]).st_mtime_ns
    assert sp.generate_superpixels(str(images), min_size=30, progress=False) == []
    assert os.stat(first[0]).st_mtime_ns == stamp
    with pytest.raises(ValueError, match=r"records other parameters \(sigma 1.0 there, 0.5 now\).*--overwrite"):
        sp.generate_superpixels(str(images), min_size=30, sigma=0.5, progress=False)
    assert sp.generate_superpixels(str(images), min_size=30, sigma=0.5, overwrite=True, progress=False) == first
    manifest = json.loads((images / "superpixels_30" / "superpixel_manifest.json").read_text())
    assert manifest["parameters"]["sigma"] == 0.5
    os.remove(images / "superpixels_30" / "superpixel_manifest.json")
    with pytest.raises(ValueError, match="holds superpixel files but no superpixel_manifest.json"):
        sp.generate_superpixels(str(images), min_size=30, progress=False)


def test_the_dataset_sets_the_threshold(images):
    (images / "preprocessing_manifest.json").write_text(json.dumps({"format": 1, "dataset": "CHAOST2"}))
    sp.generate_superpixels(str(images), min_size=30, progress=False)
    manifest = json.loads((images / "superpixels_30" / "superpixel_manifest.json").read_text())
    assert manifest["parameters"]["body_threshold"] == 1e-4 + 50 and manifest["dataset"] == "CHAOST2"
    sp.generate_superpixels(str(images), min_size=31, dataset="SABS", threshold=70.0, progress=False)
    manifest = json.loads((images / "superpixels_31" / "superpixel_manifest.json").read_text())
    assert manifest["parameters"]["body_threshold"] == 70.0


def test_cli_help_run_and_one_line_error(images, tmp_path, capsys):
    assert "superpixels" in preprocess.USAGE
    with pytest.raises(SystemExit) as done:
        preprocess.main(["superpixels", "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    for option in ("--data-dir", "--min-size", "--sigma", "--threshold", "--dataset", "--overwrite"):
        assert option in text
    assert preprocess.main(["superpixels", "--data-dir", str(images), "--min-size", "30"]) == 0
    out = capsys.readouterr().out
    assert "wrote 2 superpixel volume(s)" in out and "body threshold 0.0001" in out
    assert preprocess.main(["superpixels", "--data-dir", str(images), "--min-size", "30"]) == 0
    assert "wrote 0 superpixel volume(s)" in capsys.readouterr().out

    bad_dir = tmp_path / "bad"
    bad_dir.mkdir()
    bad = body_volume(1)
    bad[2, 10, 10] = np.nan
    write_volume(bad, GEOMETRY, str(bad_dir / "image_0.nii.gz"))
    with pytest.raises(SystemExit) as done:
        preprocess.main(["superpixels", "--data-dir", str(bad_dir)])
    assert done.value.code == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "Traceback" not in error
    assert error.startswith("fafnet-preprocess superpixels: error: ")
    assert str(bad_dir / "image_0.nii.gz") in error and "non-finite" in error
    assert not (bad_dir / "superpixels_400" / "superpix-MIDDLE_0.nii.gz").exists()
    with pytest.raises(SystemExit) as done:
        preprocess.main(["superpixels", "--data-dir", str(tmp_path / "missing")])
    assert done.value.code == 2 and "is not a directory" in capsys.readouterr().err


# ----------------------------------------------------------------------------- episodes

N_VOLUMES = 6          # SYNTHETIC folds for 6: [0,1] [1,2] [2,3] [3,4] [4,5,0]; fold 0 trains on 2..5
SP_SIZE = 50           # superpixels_50/
TEST_CLASS_SLICES = (2, 3)


def handmade_superpixels() -> np.ndarray:
    """Per slice: rows 0..16 are superpixel 1 + s % 3 (557 px), rows 17..32 superpixel 4 + s % 3
    (528 px), and a 2 x 2 superpixel 9 in the corner (4 px): numbers mean nothing across slices."""
    labels = np.zeros((Z, H, W), np.int32)
    for s in range(Z):
        labels[s, :17] = 1 + s % 3
        labels[s, 17:] = 4 + s % 3
    labels[:, :2, :2] = 9
    return labels


def write_episode_dataset(root):
    os.makedirs(os.path.join(root, f"superpixels_{SP_SIZE}"))
    for v in range(N_VOLUMES):
        rng = np.random.default_rng(v)
        image = (100.0 + 20 * rng.random((Z, H, W))).astype(np.float32)
        image[:, 17:] += 50
        gt = np.zeros((Z, H, W), np.uint8)
        gt[list(TEST_CLASS_SLICES), 20:30, 5:15] = 1       # spleen, a test class
        gt[:, 2:12, 2:12] = 4                               # gallbladder, a training class
        write_volume(image, GEOMETRY, os.path.join(root, f"image_{v}.nii.gz"))
        write_volume(gt, GEOMETRY, os.path.join(root, f"label_{v}.nii.gz"))
        write_volume(handmade_superpixels(), GEOMETRY,
                     os.path.join(root, f"superpixels_{SP_SIZE}", f"superpix-MIDDLE_{v}.nii.gz"))


@pytest.fixture(scope="module")
def episode_data(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("superpixel_episodes"))
    write_episode_dataset(root)
    return root


def superpixel_set(root, **kwargs):
    options = dict(dataset="SYNTHETIC", eval_fold=0, pseudo_labels="superpixels", superpixel_min_size=SP_SIZE,
                   max_iters_per_load=10, n_volumes=N_VOLUMES, n_shot=2)
    options.update(kwargs)
    return TrainDataset(root, **options)


def zscored(image):
    return (image - image.mean(dtype=np.float64)) / image.std(dtype=np.float64)


def test_plain_episodes_are_one_slice_and_one_superpixel_of_at_least_min_size(episode_data):
    ds = superpixel_set(episode_data, augment=False)
    assert (ds.pseudo_labels, ds.superpixel_min_size, ds.n_shot) == ("superpixels", SP_SIZE, 2)
    assert all(os.path.basename(os.path.dirname(p)) == f"superpixels_{SP_SIZE}"
               for p in ds.source_files() if "superpix-MIDDLE" in p)
    labels = handmade_superpixels()
    seen = set()
    for index in range(300):
        item = ds[index]
        slices, class_id, volume = item["slice_indices"], item["class_id"], item["volume_index"]
        assert len(slices) == 3 and len(set(slices)) == 1 and volume in (2, 3, 4, 5)
        s = slices[0]
        mask = (labels[s] == class_id).astype(np.float32)
        assert class_id != 9 and mask.sum() >= 200                 # the 4-pixel superpixel is never taken
        for k in range(2):
            np.testing.assert_array_equal(item["support_masks"][k].numpy(), mask)
        np.testing.assert_array_equal(item["query_labels"][0].numpy(), mask.astype(np.int64))
        image = np.repeat(ds.volumes[volume - 2].image[s][None], 3, axis=0)
        for k in range(2):
            np.testing.assert_array_equal(item["support_images"][k].numpy(), image)
        np.testing.assert_array_equal(item["query_images"][0].numpy(), image)
        seen.add((volume, s, class_id))
    # every volume, slice and superpixel of that slice (but the tiny one) comes up
    assert seen == {(v, s, c) for v in (2, 3, 4, 5) for s in range(Z) for c in (1 + s % 3, 4 + s % 3)}


def test_min_size_and_setting2_decide_the_candidates(episode_data):
    # 540 px: only the upper superpixel (557 px) of each slice is large enough
    ds = superpixel_set(episode_data, augment=False, min_size=540)
    assert {ds[i]["class_id"] for i in range(60)} == {1, 2, 3}
    with pytest.raises(ValueError, match=r"no training episode is possible .*no volume has a usable slice "
                                         r"with a superpixel of >= 600 pixels.*pseudo_labels=superpixels "
                                         r"from superpixels_50/"):
        superpixel_set(episode_data, min_size=600)
    # setting 2 (any): slices holding the test class 1 are never used
    ds = superpixel_set(episode_data, augment=False, setting=2, setting2_protocol="any")
    used = {ds[i]["slice_indices"][0] for i in range(120)}
    assert used == set(range(Z)) - set(TEST_CLASS_SLICES)


def test_episodes_depend_on_seed_and_index_only_and_views_are_augmented_apart(episode_data):
    ds, again = superpixel_set(episode_data), superpixel_set(episode_data)
    other_seed = superpixel_set(episode_data, seed=7)
    differ = 0
    for index in (0, 5, 123):
        a, b, c = ds[index], again[index], ds[index]
        for key in ("support_images", "support_masks", "query_images", "query_labels"):
            assert np.array_equal(a[key].numpy(), b[key].numpy()) and np.array_equal(a[key].numpy(), c[key].numpy())
        differ += not np.array_equal(a["query_images"].numpy(), other_seed[index]["query_images"].numpy())
        views = [a["support_images"][0, 0], a["support_images"][1, 0], a["query_images"][0, 0]]
        for i in range(3):
            for j in range(i + 1, 3):
                assert not np.allclose(views[i].numpy(), views[j].numpy())
        masks = np.concatenate([a["support_masks"].numpy(), a["query_labels"].numpy().astype(np.float32)])
        assert set(np.unique(masks)) <= {0.0, 1.0} and (masks.sum(axis=(1, 2)) > 100).all()
        assert not np.array_equal(masks[0], masks[1]) and not np.array_equal(masks[0], masks[2])
    assert differ == 3


def test_superpixel_episodes_follow_the_documented_draw_order(episode_data):
    ds = superpixel_set(episode_data)
    plain = superpixel_set(episode_data, augment=False)
    for index in range(4):
        item, raw = ds[index], plain[index]
        rng = np.random.default_rng([ds.seed, index])
        ds.sample_slices(rng)                       # volume, slice, superpixel: three draws
        views = np.concatenate([raw["support_images"][:, 0].numpy(), raw["query_images"][:, 0].numpy()])
        masks = np.concatenate([raw["support_masks"].numpy(), raw["query_labels"].numpy().astype(np.float32)])
        for v in range(3):                          # supports in order, then the query
            image = augment.gamma_transform(views[v:v + 1], rng.uniform(0.5, 1.5))
            matrix, field = augment.random_affine_matrix((H, W), rng), augment.random_elastic_field((H, W), rng)
            stacked = augment.warp_elastic(augment.warp_affine(np.stack([image[0], masks[v]], -1), matrix), field)
            views[v], masks[v] = stacked[..., 0], np.clip(np.rint(stacked[..., 1]), 0, 1)
        np.testing.assert_array_equal(item["support_images"][:, 0].numpy(), views[:2])
        np.testing.assert_array_equal(item["support_masks"].numpy(), masks[:2])
        np.testing.assert_array_equal(item["query_images"][:, 0].numpy(), views[2:])
        np.testing.assert_array_equal(item["query_labels"].numpy(), masks[2:].astype(np.int64))


def test_generated_superpixels_train(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    for v in range(N_VOLUMES):
        write_volume(body_volume(v), GEOMETRY, str(root / f"image_{v}.nii.gz"))
        write_volume(np.zeros((Z, H, W), np.uint8), GEOMETRY, str(root / f"label_{v}.nii.gz"))
    sp.generate_superpixels(str(root), min_size=40, progress=False)
    ds = superpixel_set(str(root), superpixel_min_size=40, min_size=40, n_shot=1)
    stored, _ = read_volume(str(root / "superpixels_40" / "superpix-MIDDLE_3.nii.gz"), dtype=np.int64)
    for index in range(20):
        item = ds[index]
        assert item["slice_indices"][0] == item["slice_indices"][1] != Z - 1    # the empty slice has none
        if item["volume_index"] == 3:
            area = (stored[item["slice_indices"][0]] == item["class_id"]).sum()
            assert area >= 40


def test_pseudo_label_options_are_checked(episode_data):
    with pytest.raises(ValueError, match=r"pseudo_labels must be one of \['supervoxels', 'superpixels'\], "
                                         r"got 'voxels'"):
        superpixel_set(episode_data, pseudo_labels="voxels")
    with pytest.raises(ValueError, match="superpixel_min_size must be a positive integer, got 0"):
        superpixel_set(episode_data, superpixel_min_size=0)
    with pytest.raises(ValueError, match="applies to self-supervised training only"):
        superpixel_set(episode_data, use_gt=True)
    with pytest.raises(FileNotFoundError, match=r"superpixel folder not found: .*superpixels_400.*"
                                                r"fafnet-preprocess superpixels"):
        superpixel_set(episode_data, superpixel_min_size=400)
    # the default stays the paper's supervoxels
    with pytest.raises(FileNotFoundError, match=r"supervoxel folder not found: .*supervoxels_1000"):
        superpixel_set(episode_data, pseudo_labels="supervoxels")
    # ground truth needs no pseudo-label folder
    assert superpixel_set(episode_data, pseudo_labels="supervoxels", use_gt=True, min_size=10).use_gt
