"""Known answers, worked out by hand, that pin the constants of the training data, the
evaluation protocol and the supervoxels: the gamma range (0.5, 1.5) and formula; the affine
(rotation and shear +-5 deg, shift +-5 px, zoom 0.9-1.2, zoom o shear o shift o rotation about
the centre, bilinear, zero border); the elastic field (uniform noise in [-1, 1], Gaussian
sigma 5 with a 21 x 21 kernel, alpha 10, reflecting border); the 0.5 coin flips of the
augmentation and of the slice order; the episode threshold min_size 200 and the epoch of
3000 episodes; the support fractions 1/6, 1/2, 5/6 and the linspace chunks of the evaluation;
the Dice formula; the supervoxel edge-weight factors, k = scale / 255 and the foreground
threshold 10.

Random draws are reproduced from the seed with numpy's own generator (uniform(a, b) is
a + (b - a) * random()), and every formula is written out here independently of the code, so
that changing one constant makes a test here fail (tests/tools/check_constants_pinned.py checks it)."""
import math
import os
from fractions import Fraction

import cv2
import numpy as np
import pytest

from fafnet.io.nifti import Geometry, write_volume
from fafnet.supervoxels.felzenszwalb_3d import felzenszwalb_3d, neighbour_weight_factors
from fafnet.supervoxels.generate import foreground_mask_2d
from fafnet.episodes import augment
from fafnet.episodes.evaluation import TestDataset, chunk_bounds, support_slice_positions
from fafnet.episodes.training import TrainDataset

try:  # the metrics are moving from utils.py into the experiment package
    from fafnet.evaluation.metrics import dice_from_counts
except ImportError:
    from utils import dice_from_counts


class RecordingGenerator:
    """A numpy Generator that records the values of its `random()` calls (the coin flips)."""

    def __init__(self, seed):
        self._rng = np.random.default_rng(seed)
        self.coins = []

    def random(self, *args, **kwargs):
        value = self._rng.random(*args, **kwargs)
        self.coins.append(value)
        return value

    def __getattr__(self, name):
        return getattr(self._rng, name)


# -- gamma: g ~ U(0.5, 1.5); x -> r ((x - lo + 1e-5) / r)^g + lo, r = max - lo + 1e-5 --------------
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_random_gamma_against_the_formula(seed):
    images = np.array([[[-1.0, 0.0], [1.0, 3.0]]], np.float32)
    g = 0.5 + 1.0 * np.random.default_rng(seed).random()
    lo, r = -1.0, 3.0 - (-1.0) + 1e-5
    expected = r * ((images.astype(np.float64) - lo + 1e-5) / r) ** g + lo
    out = augment.random_gamma(images, np.random.default_rng(seed))
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-7)


def test_gamma_keeps_the_1e_minus_5_offset_at_the_minimum():
    # With gamma 1 the transform is x + 1e-5: r ((x - lo + 1e-5) / r) + lo.
    out = augment.gamma_transform(np.array([0.0, 2.0], np.float32), 1.0)
    np.testing.assert_allclose(out, [1e-5, 2.0 + 1e-5], rtol=1e-7, atol=1e-10)


# -- affine: zoom o shear o shift o rotation, rotation and zoom about ((W - 1) / 2, (H - 1) / 2) ----
def translation(tx, ty):
    return np.array([[1.0, 0.0, tx], [0.0, 1.0, ty], [0.0, 0.0, 1.0]])


def about(centre, linear_2x2):
    matrix = np.eye(3)
    matrix[:2, :2] = linear_2x2
    return translation(*centre) @ matrix @ translation(-centre[0], -centre[1])


def hand_affine(shape, rotation_deg, shift, shear_deg, zoom):
    height, width = shape
    centre = ((width - 1) / 2.0, (height - 1) / 2.0)
    t = math.radians(rotation_deg)
    # OpenCV's rotation by +t (counter-clockwise on screen, y pointing down).
    rotation = about(centre, [[math.cos(t), math.sin(t)], [-math.sin(t), math.cos(t)]])
    a = math.radians(shear_deg)
    shear = np.array([[1.0, -math.sin(a), 0.0], [0.0, math.cos(a), 0.0], [0.0, 0.0, 1.0]])
    scaling = about(centre, [[zoom, 0.0], [0.0, zoom]])
    return (scaling @ shear @ translation(*shift) @ rotation)[:2]


def hand_random_affine(shape, rng):
    """rotation U(-5, 5), shift U(-5, 5) per axis, shear U(-5, 5), zoom U(0.9, 1.2), in that order."""
    u = rng.random(5)
    return hand_affine(shape, -5 + 10 * u[0], (-5 + 10 * u[1], -5 + 10 * u[2]), -5 + 10 * u[3],
                       0.9 + 0.3 * u[4])


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_random_affine_matrix_against_the_formula(seed):
    shape = (40, 50)
    expected = hand_random_affine(shape, np.random.default_rng(seed))
    np.testing.assert_allclose(augment.random_affine_matrix(shape, np.random.default_rng(seed)), expected,
                               rtol=0, atol=1e-12)


def test_affine_composition_order_and_centre_on_points():
    # 5 x 7 image, centre (3, 2). Rotation 90 deg takes (5, 2) to (3, 0); shift (1, 0) -> (4, 0);
    # shear 30 deg: (x - sin30 y, cos30 y) = (4, 0); zoom 2 about (3, 2): (5, -2).
    matrix = augment.affine_matrix((5, 7), rotation_deg=90, shift=(1, 0), shear_deg=30, zoom=2.0)
    np.testing.assert_allclose(matrix @ [5, 2, 1], [5, -2], atol=1e-12)
    # The centre: rotation keeps it; shift -> (4, 2); shear -> (4 - 1, 2 cos30); zoom doubles its
    # offset from (3, 2).
    sheared = np.array([3.0, 2 * math.cos(math.radians(30))])
    np.testing.assert_allclose(matrix @ [3, 2, 1], [3, 2] + 2 * (sheared - [3, 2]), atol=1e-12)


def test_affine_resampling_is_bilinear_with_a_zero_border():
    image = np.arange(12, dtype=np.float32).reshape(3, 4)
    stacked = np.stack([image, image], axis=-1)
    out = augment.warp_affine(stacked, augment.affine_matrix((3, 4), shift=(0.5, 0)))
    # The output at column x samples the input at x - 0.5: the mean of two neighbours, and
    # half of column 0 with the zero border outside.
    np.testing.assert_allclose(out[:, 1:, 0], (image[:, :-1] + image[:, 1:]) / 2, atol=1e-4)
    np.testing.assert_allclose(out[:, 0, 0], image[:, 0] / 2, atol=1e-4)


# -- elastic: alpha 10 x Gaussian(sigma 5, 21 x 21) * U(-1, 1) noise, reflecting border -------------
def hand_gaussian_blur(noise):
    """Separable 21-tap Gaussian with sigma 5, border reflected without repeating the edge."""
    taps = np.exp(-np.arange(-10, 11) ** 2 / (2.0 * 5.0 ** 2))
    taps /= taps.sum()
    padded = np.pad(noise, 10, mode="reflect")
    rows = sum(taps[i] * padded[i:i + noise.shape[0], :] for i in range(21))
    return sum(taps[i] * rows[:, i:i + noise.shape[1]] for i in range(21))


def hand_random_field(shape, rng):
    return np.stack([10.0 * hand_gaussian_blur(-1.0 + 2.0 * rng.random(shape)) for _ in range(2)])


@pytest.mark.parametrize("seed", [0, 5])
def test_random_elastic_field_against_the_formula(seed):
    shape = (24, 30)
    expected = hand_random_field(shape, np.random.default_rng(seed))
    field = augment.random_elastic_field(shape, np.random.default_rng(seed))
    assert field.shape == (2, 24, 30)
    np.testing.assert_allclose(field, expected, rtol=0, atol=1e-5)


def test_elastic_sampling_reflects_at_the_border_edge_included():
    image = np.array([[0.0, 4.0, 8.0]], np.float32)
    stacked = np.stack([image, image], axis=-1)
    field = np.zeros((2, 1, 3), np.float32)
    field[0] = -0.5                      # column x samples x - 0.5
    out = augment.warp_elastic(stacked, field)[..., 0]
    # x = -0.5 lies between -1 and 0; -1 reflects onto column 0 itself (edge repeated).
    np.testing.assert_allclose(out, [[0.0, 2.0, 6.0]], atol=1e-4)


@pytest.mark.parametrize("seed", [0, 3])
def test_geometric_transform_is_affine_then_elastic_with_rounded_masks(seed):
    shape = (32, 32)
    images = np.random.default_rng(100).normal(size=(2, *shape)).astype(np.float32)
    masks = np.zeros((2, *shape), np.float32)
    masks[:, 8:20, 10:24] = 1.0
    rng = np.random.default_rng(seed)
    out_images, out_masks = augment.random_geometric(images, masks, np.random.default_rng(seed))
    for i in range(2):
        # Each pair (support shot) draws its own affine, then its own field, pair after pair.
        matrix, field = hand_random_affine(shape, rng), hand_random_field(shape, rng).astype(np.float32)
        stacked = np.stack([images[i], masks[i]], axis=-1)
        warped = cv2.remap(cv2.warpAffine(stacked, matrix, (32, 32), flags=cv2.INTER_LINEAR,
                                          borderMode=cv2.BORDER_CONSTANT, borderValue=0),
                           *(np.mgrid[0:32, 0:32][::-1].astype(np.float32) + field),
                           interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        np.testing.assert_allclose(out_images[i], warped[..., 0], atol=1e-4)
        np.testing.assert_array_equal(out_masks[i], np.clip(np.rint(warped[..., 1]), 0, 1))


# -- coin flips with probability 0.5 ----------------------------------------------------------------
def test_augmentation_coins_choose_supports_below_one_half(monkeypatch):
    calls = []
    monkeypatch.setattr(augment, "random_gamma",
                        lambda images, rng: calls.append(("gamma", images is support)) or images)
    monkeypatch.setattr(augment, "random_geometric",
                        lambda images, masks, rng: calls.append(("geometric", images is support)) or (images, masks))
    support, query = np.zeros((1, 4, 4), np.float32), np.ones((1, 4, 4), np.float32)
    near_one_half = 0
    for seed in range(300):
        rng, calls[:] = RecordingGenerator(seed), []
        augment.augment_episode(support, support.copy(), query, query.copy(), rng)
        gamma_coin, geometric_coin = rng.coins            # two coins, nothing else drawn by random()
        assert calls == [("gamma", gamma_coin < 0.5), ("geometric", geometric_coin < 0.5)]
        near_one_half += abs(gamma_coin - 0.5) < 0.05 and abs(geometric_coin - 0.5) < 0.05
    assert near_one_half > 0   # draws close to 0.5 exist, so another threshold would be noticed


# -- episodes: min_size 200, max_iters_per_load 3000, slice order reversed with probability 0.5 -----
Z, H, W = 10, 24, 24
GEOMETRY = Geometry(spacing=(1.0, 1.0, 3.0), origin=(0.0, 0.0, 0.0),
                    direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))


def spleen_slices(volume):
    """Test class 1 occupies 7 slices (2..8) in volume 0 and 8 slices (1..8) elsewhere."""
    return range(2, 9) if volume == 0 else range(1, 9)


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    """6 SABS-like volumes (folds [0, 1], [1, 2], ...). supervoxels_1000: supervoxel 1 has 199
    pixels and supervoxel 2 has 200 on every slice; supervoxels_2000: only the 199-pixel one."""
    root = str(tmp_path_factory.mktemp("known_answers"))
    for v in range(6):
        image = np.random.default_rng(v).normal(100.0, 10.0, (Z, H, W)).astype(np.float32)
        labels = np.zeros((Z, H, W), np.uint8)
        for s in spleen_slices(v):
            labels[s, 4:10, 4:10] = 1
        both, small_only = np.zeros((Z, H * W), np.int16), np.zeros((Z, H * W), np.int16)
        both[:, :199], both[:, 199:399] = 1, 2
        small_only[:, :199] = 1
        write_volume(image, GEOMETRY, os.path.join(root, f"image_{v}.nii.gz"))
        write_volume(labels, GEOMETRY, os.path.join(root, f"label_{v}.nii.gz"))
        for size, supervoxels in ((1000, both), (2000, small_only)):
            write_volume(supervoxels.reshape(Z, H, W), GEOMETRY,
                         os.path.join(root, f"supervoxels_{size}", f"superpix-MIDDLE_{v}.nii.gz"))
    return root


def training_set(root, supervoxel_min_size=1000):
    return TrainDataset(root, dataset="SABS", eval_fold=0, setting=1, augment=False,
                        supervoxel_min_size=supervoxel_min_size, n_volumes=6)   # not SABS's 30


def test_min_size_200_accepts_200_pixels_and_rejects_199(dataset_dir):
    dataset = training_set(dataset_dir)
    assert {dataset[i]["class_id"] for i in range(40)} == {2}
    with pytest.raises(ValueError, match="no training episode is possible"):
        training_set(dataset_dir, supervoxel_min_size=2000)


def test_an_epoch_is_3000_episodes(dataset_dir):
    assert len(training_set(dataset_dir)) == 3000


def test_slice_order_is_reversed_when_the_coin_is_below_one_half(dataset_dir):
    dataset = training_set(dataset_dir)
    near_one_half = 0
    for seed in range(300):
        rng = RecordingGenerator(seed)
        _, _, slices = dataset.sample_slices(rng)
        (coin,) = rng.coins
        assert abs(slices[1] - slices[0]) == 1
        assert (slices[0] > slices[1]) == (coin < 0.5)
        near_one_half += abs(coin - 0.5) < 0.05
    assert near_one_half > 0


# -- evaluation protocol -----------------------------------------------------------------------------
@pytest.mark.parametrize("count", range(1, 31))
def test_support_positions_are_the_fractions_one_sixth_half_five_sixths(count):
    expected = [int(Fraction(k, 6) * count) for k in (1, 3, 5)]
    assert support_slice_positions(count) == expected


def test_support_positions_and_chunks_hand_values():
    assert support_slice_positions(7) == [1, 3, 5]           # 7/6 = 1.17, 3.5, 35/6 = 5.83
    assert support_slice_positions(5) == [0, 2, 4]           # 0.83, 2.5, 4.17
    assert support_slice_positions(13) == [2, 6, 10]         # 2.17, 6.5, 10.83
    assert chunk_bounds(7) == [(0, 2), (2, 4), (4, 7)]       # linspace 0, 2.33, 4.67, 7 -> int
    assert chunk_bounds(5) == [(0, 1), (1, 3), (3, 5)]       # 0, 1.67, 3.33, 5
    assert chunk_bounds(10) == [(0, 3), (3, 6), (6, 10)]     # 0, 3.33, 6.67, 10
    assert chunk_bounds(11) == [(0, 3), (3, 7), (7, 11)]     # 0, 3.67, 7.33, 11


def test_test_dataset_uses_three_parts_by_default(dataset_dir):
    dataset = TestDataset(dataset_dir, dataset="SABS", eval_fold=0, supp_idx=0, n_volumes=6)
    # Volume 0 has the class on slices 2..8: positions 1, 3, 5 of those 7 -> slices 3, 5, 7.
    assert dataset.support(1)["slice_indices"] == [3, 5, 7]
    (query,) = list(dataset.queries(1))                       # volume 1: 8 slices
    assert query["volume_index"] == 1 and query["chunks"] == [(0, 2), (2, 5), (5, 8)]


def test_dice_formula():
    assert dice_from_counts(3, 2, 1) == pytest.approx(6 / 9)   # 2 TP / (2 TP + FP + FN)
    assert dice_from_counts(5, 0, 5) == pytest.approx(10 / 15)
    assert dice_from_counts(1, 4, 0) == pytest.approx(2 / 6)
    assert dice_from_counts(0, 3, 2) == 0.0


# -- supervoxels ---------------------------------------------------------------------------------------
def test_edge_weight_factors_by_hand():
    # s = spacing[0] / spacing[1] = 3 / 1.5 = 2 (spacing[2] plays no part).
    offsets, factors = neighbour_weight_factors((3.0, 1.5, 0.5))
    by_offset = {tuple(int(v) for v in o): f for o, f in zip(offsets, factors)}
    expected = {(0, 0, 1): 1.0, (0, 1, 0): 1.0, (0, 1, 1): 1.0, (0, 1, -1): 1.0,
                (1, 0, 0): 4.0,                                                     # s^2
                (1, 1, 0): 2.5, (1, -1, 0): 2.5, (1, 0, 1): 2.5, (1, 0, -1): 2.5,   # (1 + s^2) / 2
                (1, 1, 1): 2.0, (1, 1, -1): 2.0, (1, -1, 1): 2.0, (1, -1, -1): 2.0}  # (2 + s^2) / 3
    assert by_offset == pytest.approx(expected, rel=1e-15)


def same_component(image, scale, spacing=(1.0, 1.0, 1.0)):
    labels = felzenszwalb_3d(np.asarray(image, np.float64), scale=scale, sigma=0, min_size=0, spacing=spacing)
    return len(np.unique(labels)) == 1


def test_merge_threshold_k_is_scale_over_255():
    # Two single voxels merge when their edge weight |d| < Int + k / 1 = k = 255 / 255 = 1.
    assert same_component([[[0.0, 0.998]]], scale=255)
    assert not same_component([[[0.0, 1.002]]], scale=255)
    assert same_component([[[0.0, 1.998]]], scale=510)       # k = 2
    assert not same_component([[[0.0, 2.004]]], scale=510)


def test_slice_axis_edge_weight_through_the_compiled_core():
    # Two voxels along the slice axis, s = 2: weight sqrt(s^2 d^2) = 2 d, merged when 2 d < k = 1.
    assert same_component([[[0.0]], [[0.49]]], scale=255, spacing=(2.0, 1.0, 1.0))
    assert not same_component([[[0.0]], [[0.51]]], scale=255, spacing=(2.0, 1.0, 1.0))


def test_foreground_is_above_10_on_the_255_scale():
    image = np.zeros((3, 9))
    image[:, 0:2] = 10.5          # 6 pixels above 10
    image[:, 3:9] = 10.0          # 18 pixels at exactly 10: background
    mask = foreground_mask_2d(image)
    expected = np.zeros((3, 9), bool)
    expected[:, 0:2] = True
    np.testing.assert_array_equal(mask, expected)
    below = np.full((3, 9), 9.5)
    below[1, 1] = 11.0
    assert foreground_mask_2d(below).sum() == 1
