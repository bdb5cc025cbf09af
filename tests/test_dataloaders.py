"""Episodic training data, the evaluation protocol and the augmentations, on tiny hand-made
volumes whose class extents are known, so indices can be checked by hand."""
import math
import os
import re
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from fafnet.io.nifti import Geometry, write_volume
from fafnet.episodes import augment
from fafnet.datasets.specs import DATASETS, get_dataset_spec, group_classes, make_folds
from fafnet.episodes.evaluation import TestDataset, chunk_bounds, support_slice_positions
from fafnet.episodes.training import TrainDataset
from fafnet.episodes.volumes import (SETTING2_PROTOCOLS, consecutive_runs, count_volumes, excluded_classes_for,
                                     remaining_slices, slice_class_areas)
from tests.helpers import truncate

Z, H, W = 12, 32, 32
N_VOLUMES = 6            # folds: [0,1] [1,2] [2,3] [3,4] [4,5,0]
SV_SIZE = 1000           # supervoxels_1000/
SUPERVOXEL_IDS = {7, 9, 11, 13}
GEOMETRY = Geometry(spacing=(1.5, 1.5, 4.0), origin=(1.0, 2.0, 3.0),
                    direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))


def class1_slices(volume):
    """Test class 1 (spleen) occupies slices 2..9, in volume 4 slices 1..11."""
    return range(1, 12) if volume == 4 else range(2, 10)


def make_volume(volume):
    """image float32, ground truth (SABS ids) and supervoxels, each [Z, H, W]."""
    gt = np.zeros((Z, H, W), np.uint8)
    for s in class1_slices(volume):
        gt[s, 2:18, 2:18] = 1                 # 256 px, test class
    gt[4:6, 18:30, 2:18] = 2                  # 192 px, test class, slices 4 and 5
    gt[:, 2:30, 20:30] = 4                    # 280 px, training class, every slice
    gt[:, 30:32, 28:32] = 5                   # 8 px: always below min_size
    sv = np.zeros((Z, H, W), np.int16)
    sv[:, :, :16] = 7                         # 512 px minus the corner below
    sv[:6, :, 16:] = 9
    sv[6:, :, 16:] = 11
    sv[:, 0:3, 0:3] = 13                      # 9 px: below min_size 200
    rng = np.random.default_rng(volume)
    image = (100.0 + 3 * volume + 20.0 * gt + rng.normal(0.0, 1.0, (Z, H, W))).astype(np.float32)
    return image, gt, sv


def write_dataset(root, n_volumes=N_VOLUMES):
    os.makedirs(os.path.join(root, f"supervoxels_{SV_SIZE}"), exist_ok=True)
    arrays = {}
    for v in range(n_volumes):
        image, gt, sv = make_volume(v)
        write_volume(image, GEOMETRY, os.path.join(root, f"image_{v}.nii.gz"))
        write_volume(gt, GEOMETRY, os.path.join(root, f"label_{v}.nii.gz"))
        write_volume(sv, GEOMETRY, os.path.join(root, f"supervoxels_{SV_SIZE}", f"superpix-MIDDLE_{v}.nii.gz"))
        arrays[v] = (image, gt, sv)
    return arrays


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("tiny_sabs"))
    return root, write_dataset(root)


def train_set(root, **kwargs):
    # n_volumes: the tiny folder holds 6 volumes, not SABS's 30.
    options = dict(dataset="SABS", eval_fold=0, supervoxel_min_size=SV_SIZE, max_iters_per_load=10,
                   n_volumes=N_VOLUMES)
    options.update(kwargs)
    return TrainDataset(root, **options)


def zscored(image):
    return (image - image.mean(dtype=np.float64)) / image.std(dtype=np.float64)


def episodes(dataset, n):
    return [dataset[i] for i in range(n)]


# ----------------------------------------------------------------------------- helpers

def test_support_positions_and_chunks_by_hand():
    assert support_slice_positions(8) == [1, 4, 6]        # int(8/6), int(8/2), int(40/6)
    assert support_slice_positions(12) == [2, 6, 10]
    assert support_slice_positions(1) == [0, 0, 0]
    assert chunk_bounds(8) == [(0, 2), (2, 5), (5, 8)]       # linspace 0, 2.67, 5.33, 8
    assert chunk_bounds(2) == [(0, 0), (0, 1), (1, 2)]
    assert chunk_bounds(0) == [(0, 0), (0, 0), (0, 0)]


def test_consecutive_runs():
    assert consecutive_runs(np.array([1, 1, 0, 1, 0, 1, 1, 1], bool)) == [(0, 2), (3, 4), (5, 8)]
    assert consecutive_runs(np.array([1, 1, 0, 1, 0, 1, 1, 1], bool), 2) == [(0, 2), (5, 8)]
    assert consecutive_runs(np.zeros(3, bool)) == []


# The classes on each slice of a hand-made SABS label volume (4 is a training class).
PROTOCOL_SLICES = [(), (1,), (2,), (2, 3), (1, 6), (1, 2, 3, 6), (4,), (3, 4), (1, 2, 3, 6, 4)]


def protocol_volume():
    gt = np.zeros((len(PROTOCOL_SLICES), 8, 8), np.uint8)
    for z, classes in enumerate(PROTOCOL_SLICES):
        for k, c in enumerate(classes):
            gt[z, k, :3] = c
    return gt


def kept(dataset, protocol, group=None, test_classes=None):
    classes = excluded_classes_for(dataset, protocol, test_classes, group)
    return np.flatnonzero(remaining_slices(protocol_volume(), classes, protocol)).tolist()


def test_setting2_protocols_keep_the_slices_worked_out_by_hand():
    assert SETTING2_PROTOCOLS == ("release", "any", "groups")
    # release: removed only where all of 1, 2, 3, 6 meet (slices 5 and 8)
    assert kept("SABS", "release") == [0, 1, 2, 3, 4, 6, 7]
    # any: removed wherever one of them appears
    assert kept("SABS", "any") == [0, 6]
    # groups: kidneys {2, 3} excluded with the any rule, then liver and spleen {1, 6}
    assert kept("SABS", "groups", 0) == [0, 1, 4, 6]
    assert kept("SABS", "groups", 1) == [0, 2, 3, 6, 7]
    # the release rule with two test classes: slices holding both 2 and 3 (3, 5, 8) go
    assert kept("SABS", "release", test_classes=(2, 3)) == [0, 1, 2, 4, 6, 7]
    assert remaining_slices(protocol_volume(), (), "any").all()


def test_class_groups_per_dataset():
    assert group_classes("SABS", 0) == (2, 3) and group_classes("SABS", 1) == (1, 6)
    assert group_classes("CHAOST2", 0) == (2, 3) and group_classes("CHAOST2", 1) == (1, 4)
    assert [group_classes("SYNTHETIC", g) for g in (0, 1)] == [(2, 3), (1, 6)]   # SABS ids
    # every group's classes are test classes of its dataset, and the groups do not overlap
    for spec in DATASETS.values():
        if spec.class_groups:
            joined = [c for g in spec.class_groups for c in g]
            assert len(set(joined)) == len(joined) and set(joined) <= set(spec.test_classes)
    # CHAOST2's group 1 is liver and spleen: {1, 4} (slice 4 holds 1, slices 6-8 hold 4)
    assert kept("CHAOST2", "groups", 1) == [0, 2, 3]
    for name in ("CMR", "Prostate_MRI"):
        with pytest.raises(ValueError, match=f"defines no class groups for {name}.*'release' or 'any'"):
            excluded_classes_for(name, "groups", None, 0)
    with pytest.raises(ValueError, match=r"group must be one of \[0, 1\] for SABS, got 2"):
        group_classes("SABS", 2)
    with pytest.raises(ValueError, match="'groups' protocol needs a group"):
        excluded_classes_for("SABS", "groups")
    with pytest.raises(ValueError, match="group=1 applies to the 'groups' protocol only"):
        excluded_classes_for("SABS", "any", None, 1)
    with pytest.raises(ValueError, match=r"tests classes \[2, 3\], but test_classes is \[1, 2, 3, 6\]"):
        excluded_classes_for("SABS", "groups", (1, 2, 3, 6), 0)
    assert excluded_classes_for("SABS", "groups", (3, 2), 0) == (2, 3)
    with pytest.raises(ValueError, match="protocol must be one of"):
        remaining_slices(protocol_volume(), (1,), "all")


def test_slice_class_areas_counts_pixels_per_slice():
    sv = make_volume(0)[2]
    classes, areas = slice_class_areas(sv)
    assert classes.tolist() == [7, 9, 11, 13]
    assert areas.shape == (Z, 4)
    assert areas[0].tolist() == [512 - 9, 512, 0, 9]
    assert areas[11].tolist() == [512 - 9, 0, 512, 9]


# ----------------------------------------------------------------------------- training episodes

def test_episode_shapes_dtypes_and_supervoxel_labels(data):
    root, arrays = data
    ds = train_set(root, augment=False)
    assert len(ds) == 10 and ds.volume_indices == [2, 3, 4, 5]
    for item in episodes(ds, 30):
        assert item["support_images"].shape == (1, 3, H, W) and item["support_images"].dtype == torch.float32
        assert item["support_masks"].shape == (1, H, W) and item["support_masks"].dtype == torch.float32
        assert item["query_images"].shape == (1, 3, H, W) and item["query_images"].dtype == torch.float32
        assert item["query_labels"].shape == (1, H, W) and item["query_labels"].dtype == torch.int64
        assert item["class_id"] in {7, 9, 11}                 # supervoxel ids, 13 is too small
        image, _, sv = arrays[item["volume_index"]]
        s, q = item["slice_indices"]
        assert abs(s - q) == 1
        expected_image = torch.from_numpy(zscored(image).astype(np.float32))
        assert torch.allclose(item["support_images"][0, 2], expected_image[s], atol=1e-5)
        assert torch.equal(item["query_images"][0, 0], item["query_images"][0, 1])
        assert torch.equal(item["support_masks"][0], torch.from_numpy(sv[s] == item["class_id"]).float())
        assert torch.equal(item["query_labels"][0], torch.from_numpy(sv[q] == item["class_id"]).long())


def test_setting2_any_removes_every_slice_with_a_test_class(data):
    root, arrays = data
    ds = train_set(root, augment=False, setting=2, setting2_protocol="any")
    # volume 2 by hand: test classes on slices 2..9, so only pairs in {0,1} and {10,11} remain
    assert np.flatnonzero(ds.volumes[0].allowed).tolist() == [0, 1, 10, 11]
    for item in episodes(ds, 60):
        gt = arrays[item["volume_index"]][1]
        for s in item["slice_indices"]:
            assert not np.isin(gt[s], [1, 2, 3, 6]).any()
        assert sorted(item["slice_indices"]) in ([0, 1], [10, 11])


def test_setting1_keeps_test_class_slices_and_release_rule_is_reachable(data):
    root, _ = data
    seen1 = {s for item in episodes(train_set(root, augment=False, setting=1), 60) for s in item["slice_indices"]}
    assert seen1 & set(range(2, 10))
    ds_all = train_set(root, augment=False, setting=2, setting2_protocol="release", test_classes=(1, 2))
    assert ds_all.protocol_name == "release"
    seen_all = {s for item in episodes(ds_all, 60) for s in item["slice_indices"]}
    assert not seen_all & {4, 5} and seen_all & {2, 3, 6, 7}


def test_groups_protocol_trains_without_the_group(data):
    root, arrays = data
    # group 0 = kidneys {2, 3}: only slices 4 and 5 hold class 2, so they go; spleen stays
    kidneys = train_set(root, augment=False, setting=2, setting2_protocol="groups", group=0, use_gt=True)
    assert kidneys.test_classes == (2, 3) and kidneys.protocol_name == "groups/0"
    assert np.flatnonzero(~kidneys.volumes[0].allowed).tolist() == [4, 5]
    seen = {item["class_id"] for item in episodes(kidneys, 60)}
    assert seen == {1, 4}                   # spleen (1) is a training class here
    for item in episodes(kidneys, 30):
        assert not set(item["slice_indices"]) & {4, 5}
    spleen = train_set(root, augment=False, setting=2, setting2_protocol="groups", group=1)
    assert np.flatnonzero(spleen.volumes[0].allowed).tolist() == [0, 1, 10, 11]
    with pytest.raises(ValueError, match="defines no class groups for CMR"):
        train_set(root, dataset="CMR", setting=2, setting2_protocol="groups", group=0)


def test_ground_truth_labels_drop_test_classes(data):
    root, arrays = data
    ds = train_set(root, augment=False, use_gt=True, setting=1)
    for item in episodes(ds, 30):
        assert item["class_id"] == 4          # 1, 2 are test classes; 5 is below min_size
        gt = arrays[item["volume_index"]][1]
        s, q = item["slice_indices"]
        assert torch.equal(item["support_masks"][0], torch.from_numpy(gt[s] == 4).float())


def test_min_size_filters_small_classes(data):
    root, _ = data
    small = {item["class_id"] for item in episodes(train_set(root, augment=False, min_size=0), 80)}
    assert 13 in small
    large = {item["class_id"] for item in episodes(train_set(root, augment=False, min_size=200), 80)}
    assert 13 not in large


def test_volumes_orders_and_fold_hold_out(data):
    root, _ = data
    items = episodes(train_set(root, augment=False, eval_fold=4), 80)
    assert {item["volume_index"] for item in items} == {1, 2, 3}      # fold 4 = {4, 5, 0}
    directions = {np.sign(np.diff(item["slice_indices"]))[0] for item in items}
    assert directions == {-1, 1}                                        # reversal with p = 0.5


def test_k_shots_consecutive_and_infeasible_setting_is_an_error(data):
    root, _ = data
    ds = train_set(root, n_shot=2, setting=1)
    item = ds[0]
    assert item["support_images"].shape == (2, 3, H, W) and item["support_masks"].shape == (2, H, W)
    assert len(item["slice_indices"]) == 3 and abs(np.diff(item["slice_indices"])).tolist() == [1, 1]
    with pytest.raises(ValueError, match="no training episode is possible"):
        train_set(root, n_shot=2, setting=2, setting2_protocol="any")   # the longest allowed run is 2 slices


def test_augmented_episodes_keep_binary_masks_and_change_pixels(data):
    root, _ = data
    plain, augmented = train_set(root, augment=False), train_set(root, augment=True)
    changed = 0
    for i in range(10):
        a, p = augmented[i], plain[i]
        assert a["slice_indices"] == p["slice_indices"] and a["class_id"] == p["class_id"]
        for key in ("support_masks", "query_labels"):
            assert set(torch.unique(a[key]).tolist()) <= {0, 1}
        changed += not torch.equal(a["query_images"], p["query_images"])
        changed += not torch.equal(a["support_images"], p["support_images"])
    assert changed >= 10        # gamma hits one side and the geometry one side per episode


def assert_same_episode(a, b):
    assert a.keys() == b.keys()
    for key, value in a.items():
        if torch.is_tensor(value):
            assert torch.equal(value, b[key]), key
        else:
            assert value == b[key], key


def test_seed_determinism_any_index_and_workers(data):
    root, _ = data
    ds = train_set(root)
    assert_same_episode(ds[3], ds[3])
    assert_same_episode(ds[25], train_set(root)[25])           # index beyond len, new instance
    other = train_set(root, seed=7)
    assert any(not torch.equal(ds[i]["query_images"], other[i]["query_images"]) for i in range(5))
    loader = DataLoader(ds, batch_size=None, sampler=range(20, 24), num_workers=2)
    for index, item in zip(range(20, 24), loader):
        assert_same_episode(item, ds[index])


# ----------------------------------------------------------------------------- evaluation protocol

def test_support_slices_and_query_chunks_by_hand(data):
    root, arrays = data
    ds = TestDataset(root, dataset="SABS", eval_fold=4, supp_idx=0, n_volumes=N_VOLUMES)
    assert ds.fold_volumes == [0, 4, 5] and ds.support_volume == 0 and ds.query_volumes == [4, 5]
    assert ds.test_classes == [1, 2, 3, 6]
    support = ds.support(1)
    assert support["slice_indices"] == [3, 6, 8] and support["volume_index"] == 0   # of slices 2..9
    assert support["images"].shape == (3, 3, H, W) and support["masks"].shape == (3, H, W)
    assert torch.equal(support["masks"][1], torch.from_numpy(arrays[0][1][6] == 1).float())
    queries = list(ds.queries(1))
    assert [q["volume_index"] for q in queries] == [4, 5]
    assert queries[0]["slice_indices"] == list(range(1, 12))
    assert queries[0]["chunks"] == [(0, 3), (3, 7), (7, 11)]         # linspace(0, 11, 4)
    assert queries[1]["chunks"] == [(0, 2), (2, 5), (5, 8)]
    q = queries[0]
    assert q["images"].shape == (11, 3, H, W) and q["labels"].dtype == torch.int64
    assert torch.allclose(q["images"][0, 0], torch.from_numpy(zscored(arrays[4][0])[1]).float(), atol=1e-5)
    assert np.array_equal(q["label_volume"], arrays[4][1]) and q["volume_shape"] == (Z, H, W)
    assert q["geometry"] == GEOMETRY and q["image_path"].endswith("image_4.nii.gz")
    assert [q["chunks"] for q in ds.queries(2)] == [[(0, 0), (0, 1), (1, 2)]] * 2    # slices 4, 5
    assert TestDataset(root, dataset="SABS", eval_fold=4, supp_idx=1,
                       n_volumes=N_VOLUMES).support(1)["slice_indices"] == [2, 6, 10]


def test_absent_class_support_error_and_empty_query(data):
    root, _ = data
    ds = TestDataset(root, dataset="SABS", eval_fold=0, n_volumes=N_VOLUMES)
    with pytest.raises(ValueError, match="class 3 does not occur.*image_0"):
        ds.support(3)
    (query,) = ds.queries(3)
    assert query["images"].shape == (0, 3, H, W) and query["chunks"] == [(0, 0)] * 3


def test_cmr_labels_are_mapped(tmp_path):
    root = str(tmp_path)
    for v in range(5):
        image, gt, _ = make_volume(v)
        raw = np.select([gt == 1, gt == 2, gt == 4], [200, 500, 600], 0).astype(np.int16)
        write_volume(image, GEOMETRY, os.path.join(root, f"image_{v}.nii.gz"))
        write_volume(raw, GEOMETRY, os.path.join(root, f"label_{v}.nii.gz"))
    ds = TestDataset(root, dataset="CMR", eval_fold=0, n_volumes=5)
    (query,) = ds.queries(3)
    assert set(np.unique(query["label_volume"]).tolist()) == {0, 1, 2, 3}
    assert query["slice_indices"] == list(range(Z)) and ds.support(1)["slice_indices"] == [3, 6, 8]
    write_volume(np.full((Z, H, W), 300, np.int16), GEOMETRY, os.path.join(root, "label_1.nii.gz"))
    with pytest.raises(ValueError, match=r"label_1\.nii\.gz holds label values \[300\]"):
        TestDataset(root, dataset="CMR", eval_fold=0, n_volumes=5)


# ----------------------------------------------------------------------------- bad input

def test_clear_errors_for_bad_folders_files_and_arguments(data, tmp_path):
    root, _ = data
    with pytest.raises(FileNotFoundError, match="data folder not found"):
        TrainDataset(str(tmp_path / "nowhere"))
    with pytest.raises(KeyError, match="dataset='ABD' is unknown; known datasets: SABS"):
        train_set(root, dataset="ABD")
    for kwargs, message in [({"setting": 3}, "setting"), ({"setting2_protocol": "all"}, "protocol"),
                            ({"eval_fold": 5}, "eval_fold"), ({"n_shot": 0}, "n_shot"),
                            ({"test_classes": (99,)}, "test_classes")]:
        with pytest.raises(ValueError, match=message):
            train_set(root, **kwargs)
    with pytest.raises(FileNotFoundError, match="supervoxels_5000"):
        train_set(root, supervoxel_min_size=5000)
    with pytest.raises(ValueError, match=r"image_2\.nii\.gz has in-plane size \(32, 32\), expected \(64, 64\)"):
        train_set(root, image_size=(64, 64))
    with pytest.raises(ValueError, match="supp_idx"):
        TestDataset(root, dataset="SABS", eval_fold=0, supp_idx=2, n_volumes=N_VOLUMES)

    broken = str(tmp_path / "broken")
    shutil.copytree(root, broken)
    write_volume(np.zeros((Z, H, 16), np.uint8), GEOMETRY, os.path.join(broken, "label_3.nii.gz"))
    with pytest.raises(ValueError, match=r"label_3\.nii\.gz has shape \(12, 32, 16\) but its image"):
        train_set(broken, use_gt=True)
    os.remove(os.path.join(broken, "image_3.nii.gz"))
    with pytest.raises(FileNotFoundError, match=r"image_3\.nii\.gz"):
        count_volumes(broken)
    assert count_volumes(root) == N_VOLUMES
    # n_volumes below the count present would leave image_5 out of every fold: refused
    with pytest.raises(ValueError, match=r"holds 6 volumes but n_volumes=5: the folds would leave out image_5"):
        count_volumes(root, 5)


# ----------------------------------------------------------------------------- augmentations

def test_gamma_known_values():
    x = np.array([0.0, 1.0, 2.0], np.float32)
    np.testing.assert_allclose(augment.gamma_transform(x, 1.0), x, atol=1e-5)
    out = augment.gamma_transform(x, 2.0)
    np.testing.assert_allclose(out, [0.0, 0.5, 2.0], atol=1e-4)   # r ((x - lo) / r)^2 + lo, r = 2
    shifted = augment.gamma_transform(x - 3.0, 2.0)                 # lo = -3 shifts, shape unchanged
    np.testing.assert_allclose(shifted, out - 3.0, atol=1e-4)


def test_affine_matrix_known_answers_and_order():
    np.testing.assert_allclose(augment.affine_matrix((5, 5)), [[1, 0, 0], [0, 1, 0]], atol=1e-12)
    a = math.radians(30)
    np.testing.assert_allclose(augment.affine_matrix((5, 5), shear_deg=30),
                               [[1, -math.sin(a), 0], [0, math.cos(a), 0]], atol=1e-12)
    zoom = augment.affine_matrix((5, 5), zoom=2.0)                  # about the centre (2, 2)
    np.testing.assert_allclose(zoom @ [2, 2, 1], [2, 2], atol=1e-12)
    np.testing.assert_allclose(zoom @ [3, 2, 1], [4, 2], atol=1e-12)
    # rotation first: (4, 2) -rot 90 about (2, 2)-> (2, 0) -shift (3, 0)-> (5, 0)
    both = augment.affine_matrix((5, 5), rotation_deg=90, shift=(3, 0))
    np.testing.assert_allclose(both @ [4, 2, 1], [5, 0], atol=1e-12)


def test_warps_known_answers():
    image = np.arange(16, dtype=np.float32).reshape(4, 4)
    stacked = np.stack([image, image], -1)
    moved = augment.warp_affine(stacked, augment.affine_matrix((4, 4), shift=(1, 0)))
    np.testing.assert_allclose(moved[:, 1:, 0], image[:, :-1], atol=1e-5)
    assert (moved[:, 0] == 0).all()                               # constant 0 border
    field = np.zeros((2, 4, 4), np.float32)
    field[0] = 1.5                                                # sample at x + 1.5
    out = augment.warp_elastic(stacked, field)
    np.testing.assert_allclose(out[:, :2, 1], image[:, :2] + 1.5, atol=1e-4)   # linear
    # x = 4.5 lies between columns 4 and 5, which reflect (edge included) onto 3 and 2
    np.testing.assert_allclose(out[:, 3, 1], (image[:, 3] + image[:, 2]) / 2, atol=1e-4)
    np.testing.assert_allclose(augment.warp_elastic(stacked, np.zeros_like(field)), stacked)


def test_random_geometric_moves_image_and_mask_together():
    rng = np.random.default_rng(0)
    field = augment.random_elastic_field((64, 64), rng)
    assert field.shape == (2, 64, 64) and 0 < np.abs(field).max() <= augment.ELASTIC_ALPHA
    mask = np.zeros((2, 64, 64), np.float32)
    mask[:, 16:40, 20:50] = 1
    images, masks = augment.random_geometric(mask * 3.0, mask.copy(), np.random.default_rng(1))
    assert set(np.unique(masks).tolist()) == {0.0, 1.0} and not np.array_equal(masks, mask)
    assert np.mean((images > 1.5) == (masks == 1)) > 0.999
    again = augment.random_geometric(mask * 3.0, mask.copy(), np.random.default_rng(1))
    assert np.array_equal(again[0], images) and np.array_equal(again[1], masks)


def test_k_shots_draw_a_fresh_transform_per_support_and_one_shot_keeps_its_draws():
    shape = (48, 48)
    mask = np.zeros((3,) + shape, np.float32)
    mask[:, 12:36, 10:30] = 1
    _, masks = augment.random_geometric(mask * 2.0, mask.copy(), np.random.default_rng(0))
    # three identical inputs, three different warps
    assert all(not np.array_equal(masks[i], masks[j]) for i, j in ((0, 1), (0, 2), (1, 2)))
    # one pair: exactly one affine, then one elastic field, from the generator in that order
    image = np.random.default_rng(5).normal(size=(1,) + shape).astype(np.float32)
    one_image, one_mask = augment.random_geometric(image, mask[:1].copy(), np.random.default_rng(3))
    rng = np.random.default_rng(3)
    matrix, field = augment.random_affine_matrix(shape, rng), augment.random_elastic_field(shape, rng)
    stacked = augment.warp_elastic(augment.warp_affine(np.stack([image[0], mask[0]], -1), matrix), field)
    assert np.array_equal(one_image[0], stacked[..., 0])
    assert np.array_equal(one_mask[0], np.clip(np.rint(stacked[..., 1]), 0, 1))


def test_episode_augmentation_moves_supports_separately_with_one_gamma():
    supports = np.repeat(np.linspace(0, 1, 40 * 40, dtype=np.float32).reshape(1, 40, 40), 3, axis=0)
    support_masks = np.zeros((3, 40, 40), np.float32)
    support_masks[:, 10:30, 8:28] = 1
    query, query_mask = supports[:1].copy(), support_masks[:1].copy()
    branches = set()
    for seed in range(12):
        coins = np.random.default_rng(seed)
        gamma_on_supports = coins.random() < 0.5
        coins.uniform()                                     # the gamma itself
        geometry_on_supports = coins.random() < 0.5
        s, sm, q, qm = augment.augment_episode(supports.copy(), support_masks.copy(), query.copy(),
                                               query_mask.copy(), np.random.default_rng(seed))
        identical = [np.array_equal(s[0], s[k]) and np.array_equal(sm[0], sm[k]) for k in (1, 2)]
        # identical supports stay identical under the shared gamma, and differ once warped
        assert identical == ([False, False] if geometry_on_supports else [True, True])
        # the query is left alone only when both flips chose the supports
        assert np.array_equal(q, query) == (gamma_on_supports and geometry_on_supports)
        branches.add(geometry_on_supports)
    assert branches == {True, False}


def test_one_shot_episodes_follow_the_documented_draw_order(data):
    root, _ = data
    ds = train_set(root, augment=True, setting=1)
    plain = train_set(root, augment=False, setting=1)
    for index in range(6):
        item, raw = ds[index], plain[index]
        rng = np.random.default_rng([ds.seed, index])
        ds.sample_slices(rng)                              # steps 1-6 use the same generator
        s, sm = raw["support_images"][:, 0].numpy(), raw["support_masks"].numpy()
        q, qm = raw["query_images"][:, 0].numpy(), raw["query_labels"].numpy().astype(np.float32)
        if rng.random() < 0.5:
            s = augment.gamma_transform(s, rng.uniform(0.5, 1.5))
        else:
            q = augment.gamma_transform(q, rng.uniform(0.5, 1.5))
        on_supports = rng.random() < 0.5
        image, mask = (s, sm) if on_supports else (q, qm)
        matrix, field = augment.random_affine_matrix((H, W), rng), augment.random_elastic_field((H, W), rng)
        stacked = augment.warp_elastic(augment.warp_affine(np.stack([image[0], mask[0]], -1), matrix), field)
        image, mask = stacked[None, ..., 0], np.clip(np.rint(stacked[None, ..., 1]), 0, 1)
        s, sm = (image, mask) if on_supports else (s, sm)
        q, qm = (image, mask) if not on_supports else (q, qm)
        assert np.array_equal(item["support_images"][:, 0].numpy(), s)
        assert np.array_equal(item["support_masks"].numpy(), sm)
        assert np.array_equal(item["query_images"][:, 0].numpy(), q)
        assert np.array_equal(item["query_labels"].numpy(), qm.astype(np.int64))


# ----------------------------------------------------------------------------- folds

def test_folds_are_the_fixed_lists_of_each_dataset():
    r = lambda a, b: list(range(a, b + 1))  # noqa: E731 (inclusive ranges, as the lists are written)
    expected = {
        "SABS": [r(0, 6), r(6, 12), r(12, 18), r(18, 24), r(24, 29) + [0]],
        "CHAOST2": [r(0, 4), r(4, 8), r(8, 12), r(12, 16), r(16, 19) + [0]],
        "CMR": [r(0, 7), r(7, 14), r(14, 21), r(21, 28), r(28, 34) + [0]],
        "Prostate_MRI": [r(0, 8), r(8, 16), r(16, 24), r(24, 32), r(32, 39) + [0]],
    }
    for name, folds in expected.items():
        spec = get_dataset_spec(name)
        assert spec.folds() == folds == make_folds(spec.n_volumes), name
        assert set().union(*map(set, folds)) == set(range(spec.n_volumes))
    synthetic = get_dataset_spec("SYNTHETIC")
    assert synthetic.n_volumes is None and synthetic.folds(10)[4] == [8, 9, 0]
    with pytest.raises(ValueError, match="SYNTHETIC has no fixed volume count"):
        synthetic.folds()


def test_a_folder_with_another_volume_count_is_an_error_unless_n_volumes_says_so(data, tmp_path):
    root, _ = data
    message = r"holds 6 volumes but SABS has 30.*set n_volumes=6"
    with pytest.raises(ValueError, match=message):
        count_volumes(root, spec=get_dataset_spec("SABS"))
    with pytest.raises(ValueError, match=message):
        TrainDataset(root, dataset="SABS", supervoxel_min_size=SV_SIZE)
    with pytest.raises(ValueError, match=r"holds 6 volumes but CHAOST2 has 20"):
        TestDataset(root, dataset="CHAOST2")
    assert count_volumes(root, spec=get_dataset_spec("SYNTHETIC")) == N_VOLUMES   # any count
    assert count_volumes(root, 6, spec=get_dataset_spec("SABS")) == 6
    # with n_volumes the folds are made for that count: fold 4 of 6 = {4, 5, 0}
    assert TestDataset(root, dataset="SABS", eval_fold=4, n_volumes=6).fold_volumes == [0, 4, 5]
    synthetic = TrainDataset(root, dataset="SYNTHETIC", supervoxel_min_size=SV_SIZE, eval_fold=4)
    assert synthetic.volume_indices == [1, 2, 3]
# ----------------------------------------------------------------------------- damaged files

def broken_copy(root, tmp_path):
    copy = str(tmp_path / "copy")
    shutil.copytree(root, copy)
    return copy




# The label files compress to about 270 bytes: they keep 100 instead of 400.
@pytest.mark.parametrize("name, keep", [
    ("image_2.nii.gz", "half"), ("image_2.nii.gz", 400),
    ("label_2.nii.gz", "half"), ("label_2.nii.gz", 100),
    (f"supervoxels_{SV_SIZE}/superpix-MIDDLE_2.nii.gz", "half"),
    (f"supervoxels_{SV_SIZE}/superpix-MIDDLE_2.nii.gz", 100)])
def test_truncated_volume_is_an_error_naming_it(data, tmp_path, name, keep):
    root = broken_copy(data[0], tmp_path)
    path = os.path.join(root, name)
    truncate(path, os.path.getsize(path) // 2 if keep == "half" else keep)
    with pytest.raises(ValueError, match=f"{re.escape(path)}: damaged or truncated gzip stream"):
        train_set(root, setting=2)   # setting 2 reads the ground truth too


@pytest.mark.parametrize("keep", ["half", 400])
def test_truncated_query_volume_fails_evaluation(data, tmp_path, keep):
    root = broken_copy(data[0], tmp_path)
    path = os.path.join(root, "image_1.nii.gz")      # the query of fold 0
    truncate(path, os.path.getsize(path) // 2 if keep == "half" else 400)
    with pytest.raises(ValueError, match=f"{re.escape(path)}: damaged or truncated gzip stream"):
        TestDataset(root, dataset="SABS", eval_fold=0, n_volumes=N_VOLUMES)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_image_voxels_are_refused_with_the_count(data, tmp_path, bad):
    root = broken_copy(data[0], tmp_path)
    image, _, _ = make_volume(3)
    image.reshape(-1)[:: 100] = bad                    # 1 % of the voxels
    path = os.path.join(root, "image_3.nii.gz")
    write_volume(image, GEOMETRY, path)
    on_disk = np.asarray(nib.load(path).dataobj)       # a second reader: really on disk
    assert np.count_nonzero(~np.isfinite(on_disk)) == 123
    kind = "123 NaN, 0 infinite" if np.isnan(bad) else "0 NaN, 123 infinite"
    with pytest.raises(ValueError, match=rf"image_3\.nii\.gz has 123 non-finite voxel\(s\) of 12288 \({kind}\)"):
        train_set(root)
    with pytest.raises(ValueError, match=r"image_3\.nii\.gz has 123 non-finite"):
        TestDataset(root, dataset="SABS", eval_fold=2, n_volumes=N_VOLUMES)


def test_label_values_the_dataset_does_not_define_are_refused(data, tmp_path):
    root = broken_copy(data[0], tmp_path)
    _, gt, sv = make_volume(3)
    gt[5, 10:12, 10:12] = 42
    gt[6, 0, 0] = 14
    path = os.path.join(root, "label_3.nii.gz")
    write_volume(gt, GEOMETRY, path)
    message = rf"{re.escape(path)} holds label values \[14, 42\] that SABS does not define"
    for kwargs in ({"use_gt": True}, {"use_gt": False, "setting": 2}):
        with pytest.raises(ValueError, match=message):
            train_set(root, **kwargs)
    with pytest.raises(ValueError, match=message):
        TestDataset(root, dataset="SABS", eval_fold=2, n_volumes=N_VOLUMES)
    train_set(root, use_gt=False, setting=1)   # the ground truth is not read at all here
    # supervoxel ids are not classes: any non-negative id is accepted
    sv[sv == 13] = 4242
    write_volume(sv, GEOMETRY, os.path.join(root, f"supervoxels_{SV_SIZE}", "superpix-MIDDLE_3.nii.gz"))
    assert 4242 in np.concatenate([v.classes for v in train_set(root, use_gt=False, setting=1).volumes])


@pytest.mark.parametrize("value, message", [(1.5, r"holds 4 non-integer label value\(s\) such as \[1.5\]"),
                                            (np.nan, r"has 4 non-finite voxel\(s\)"),
                                            (-1.0, r"holds negative label values such as \[-1\]")])
def test_label_files_must_hold_whole_non_negative_numbers(data, tmp_path, value, message):
    root = broken_copy(data[0], tmp_path)
    gt = make_volume(3)[1].astype(np.float32)
    gt[5, 10:12, 10:12] = value
    write_volume(gt, GEOMETRY, os.path.join(root, "label_3.nii.gz"))
    with pytest.raises(ValueError, match=rf"label_3\.nii\.gz {message}"):
        train_set(root, use_gt=True)
