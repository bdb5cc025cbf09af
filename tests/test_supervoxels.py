"""3D Felzenszwalb supervoxels (docs/protocol.md section 13): partition, memory,
post-processing, CLI."""
import os
import sys
import tracemalloc

import nibabel as nib
import numpy as np
import pytest

from bench.naive_felzenszwalb import (build_sorted_edges, merge_sorted_edges_python,
                                      naive_felzenszwalb_3d)
from fafnet.io.nifti import Geometry, read_volume, write_volume
from fafnet.supervoxels import generate as gen
from fafnet.supervoxels.felzenszwalb_3d import (NEIGHBOUR_OFFSETS, felzenszwalb_3d, load_extension,
                                              neighbour_weight_factors)


def relabel_by_first_occurrence(roots: np.ndarray) -> np.ndarray:
    _, first, inverse = np.unique(roots, return_index=True, return_inverse=True)
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(first)] = np.arange(len(first))
    return rank[inverse.ravel()]


# ---------------------------------------------------------------- edge weights

def test_weight_factors_follow_the_spec_and_depend_only_on_the_spacing_ratio():
    offsets, factors = neighbour_weight_factors((2.0, 1.0, 1.0))
    expected = {0: 1.0, 1: 4.0, 2: 2.5, 3: 2.0}  # by axes moved across slices; s = 2
    for (dz, dy, dx), factor in zip(offsets.tolist(), factors):
        key = 0 if dz == 0 else 1 + abs(dy) + abs(dx)
        assert factor == pytest.approx(expected[key])
    np.testing.assert_array_equal(neighbour_weight_factors((6.0, 3.0, 0.5))[1], factors)


def test_offsets_cover_the_26_neighbourhood_once():
    steps = {tuple(o) for o in NEIGHBOUR_OFFSETS}
    mirrored = {tuple(-v for v in o) for o in NEIGHBOUR_OFFSETS}
    assert len(steps) == 13 and not steps & mirrored
    assert steps | mirrored == {(a, b, c) for a in (-1, 0, 1) for b in (-1, 0, 1)
                                for c in (-1, 0, 1)} - {(0, 0, 0)}


# ---------------------------------------------------------------- same partition

@pytest.mark.parametrize("shape, spacing, scale, sigma, min_size", [
    ((4, 5, 6), (1.0, 1.0, 1.0), 200.0, 0.0, 3),
    ((5, 9, 7), (3.0, 1.2, 1.2), 500.0, 0.0, 10),
    ((6, 8, 8), (2.0, 1.0, 1.0), 300.0, 0.8, 5),
    ((3, 7, 6), (0.5, 1.0, 1.0), 1.0, 0.0, 1),
    ((1, 1, 1), (1.0, 1.0, 1.0), 1.0, 0.0, 2),
])
def test_matches_straightforward_port_on_continuous_intensities(shape, spacing, scale, sigma,
                                                                 min_size):
    image = np.random.default_rng(sum(shape)).random(shape) * 255
    ours = felzenszwalb_3d(image, scale=scale, sigma=sigma, min_size=min_size, spacing=spacing)
    reference = naive_felzenszwalb_3d(image, scale=scale, sigma=sigma, min_size=min_size,
                                      spacing=spacing, loop="python")
    compiled = naive_felzenszwalb_3d(image, scale=scale, sigma=sigma, min_size=min_size,
                                     spacing=spacing, loop="compiled")
    assert ours.shape == shape and np.issubdtype(ours.dtype, np.integer)
    # Both number components by first occurrence, so equal partitions give equal arrays.
    np.testing.assert_array_equal(ours, reference)
    np.testing.assert_array_equal(compiled, reference)


@pytest.mark.parametrize("scale", [0.0, 1.0, 2000.0])
def test_matches_reference_with_ties_under_the_same_tie_break(scale):
    # Quantised intensities: many equal weights, zero weights included.
    rng = np.random.default_rng(7)
    image = rng.integers(0, 3, (4, 6, 7)).astype(np.float64) * 40
    spacing, min_size = (2.0, 1.0, 1.0), 4
    ours = felzenszwalb_3d(image, scale=scale, sigma=0, min_size=min_size, spacing=spacing)
    # Reference edge order: weight, then voxel index, then the package's direction order.
    edges, costs = build_sorted_edges(image, spacing)
    direction_of_step = {(dz * image.shape[1] + dy) * image.shape[2] + dx: d
                         for d, (dz, dy, dx) in enumerate(NEIGHBOUR_OFFSETS)}
    direction = np.array([direction_of_step[step] for step in (edges[:, 1] - edges[:, 0]).tolist()])
    order = np.lexsort((direction, edges[:, 0], costs))
    forest = merge_sorted_edges_python(edges[order], costs[order], image.size, scale / 255.0,
                                       min_size)
    reference = relabel_by_first_occurrence(forest).reshape(image.shape)
    np.testing.assert_array_equal(ours, reference)


def test_edges_are_taken_in_exact_float64_order_when_float32_keys_collide():
    # Integer steps plus 1e-9 noise: many distinct float64 weights share one float32.
    rng = np.random.default_rng(1)
    image = rng.integers(0, 4, (4, 8, 8)).astype(np.float64) * 20 + rng.random((4, 8, 8)) * 1e-9
    extension = load_extension()
    offsets, factors = neighbour_weight_factors((1.0, 1.0, 1.0))
    labels, keys = extension.segment_volume(image, offsets, factors, 2000 / 255.0, 4,
                                            return_keys=True)
    weights = extension.key_weights(image, offsets, factors, keys)
    float32_bits = keys >> np.uint64(32)
    same_float32 = float32_bits[1:] == float32_bits[:-1]
    assert (same_float32 & (weights[1:] != weights[:-1])).sum() > 100  # the case is exercised
    assert np.all(np.diff(weights) >= 0)
    # Every edge is keyed exactly once (no zero weights here).
    edges, _ = build_sorted_edges(image)
    assert len(np.unique(keys & np.uint64(0xFFFFFFFF))) == len(keys) == len(edges)
    np.testing.assert_array_equal(
        labels, naive_felzenszwalb_3d(image, scale=2000, sigma=0, min_size=4, loop="python"))


# ---------------------------------------------------------------- known answers

def test_two_flat_blocks_give_two_components_numbered_by_first_voxel():
    image = np.zeros((3, 4, 6))
    image[:, :, 3:] = 200.0
    labels = felzenszwalb_3d(image, scale=1, sigma=0, min_size=1)
    expected = np.zeros(image.shape, dtype=np.int64)
    expected[:, :, 3:] = 1
    np.testing.assert_array_equal(labels, expected)
    assert np.array_equal(felzenszwalb_3d(np.full((2, 3, 3), 7.0), sigma=0), np.zeros((2, 3, 3)))


def test_labels_are_consecutive_and_ordered_by_first_occurrence():
    labels = felzenszwalb_3d(np.random.default_rng(0).random((5, 12, 12)) * 255, scale=100,
                             sigma=0, min_size=5)
    values, first = np.unique(labels, return_index=True)
    np.testing.assert_array_equal(values, np.arange(labels.max() + 1))
    assert np.all(np.diff(first) > 0) and labels.max() >= 3


def test_slice_spacing_weights_decide_cross_slice_merging():
    # Two flat 2x2 slices one grey level apart; each slice merges first (weight 0, size 4),
    # then the best cross-slice edge must beat k / 4 = 1500 / 255 / 4 ~ 1.47:
    # s = 1 gives weight 1 (merge), s = 3 gives at best sqrt((2 + 9) / 3) ~ 1.91 (no merge).
    image = np.stack([np.zeros((2, 2)), np.ones((2, 2))])
    same = felzenszwalb_3d(image, scale=1500, sigma=0, min_size=1, spacing=(1, 1, 1))
    thick = felzenszwalb_3d(image, scale=1500, sigma=0, min_size=1, spacing=(3, 1, 1))
    assert same.max() == 0
    np.testing.assert_array_equal(thick, np.array([0, 1])[:, None, None] * np.ones((2, 2, 2)))


def test_second_pass_absorbs_components_below_min_size():
    image = np.zeros((6, 6, 6))
    image[2:4, 2:4, 2:4] = 100.0  # an 8-voxel cube
    assert felzenszwalb_3d(image, sigma=0, min_size=8).max() == 1
    assert felzenszwalb_3d(image, sigma=0, min_size=9).max() == 0


def test_integer_and_float_inputs_agree():
    image = np.random.default_rng(2).integers(0, 255, (3, 6, 6))
    np.testing.assert_array_equal(felzenszwalb_3d(image.astype(np.uint8), sigma=0, scale=50),
                                  felzenszwalb_3d(image.astype(np.float64), sigma=0, scale=50))


# ---------------------------------------------------------------- memory

def traced_peak_bytes(function, *args, **kwargs) -> int:
    tracemalloc.start()
    try:
        function(*args, **kwargs)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_peak_memory_is_a_fraction_of_the_straightforward_port():
    # No zero-weight edges (continuous noise): the compact version's worst case.
    image = np.random.default_rng(0).random((8, 40, 40)) * 255
    kwargs = dict(scale=1, sigma=0, min_size=20, spacing=(2.5, 1.0, 1.0))
    ours = traced_peak_bytes(felzenszwalb_3d, image, **kwargs)
    naive = traced_peak_bytes(naive_felzenszwalb_3d, image, **kwargs)
    assert ours < 140 * image.size  # 8 bytes x 13 edges + union-find, per voxel
    assert ours < 0.3 * naive


# ---------------------------------------------------------------- errors

@pytest.mark.parametrize("kwargs, message", [
    (dict(image=np.zeros((4, 4))), "3D"),
    (dict(image=np.zeros((0, 3, 3))), "empty"),
    (dict(image=np.full((2, 2, 2), np.nan)), "NaN"),
    (dict(image=np.zeros((2, 2, 2)), spacing=(1, 1)), "spacing"),
    (dict(image=np.zeros((2, 2, 2)), spacing=(1, 0, 1)), "spacing"),
    (dict(image=np.zeros((2, 2, 2)), min_size=-1), "min_size"),
    (dict(image=np.zeros((2, 2, 2)), min_size=2.5), "min_size"),
    (dict(image=np.zeros((2, 2, 2)), scale=-1), "scale"),
    (dict(image=np.zeros((2, 2, 2)), sigma=-0.1), "sigma"),
])
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        felzenszwalb_3d(**kwargs)


def test_missing_compiled_module_says_how_to_build(monkeypatch):
    monkeypatch.setitem(sys.modules, "fafnet.supervoxels._felzenszwalb_3d", None)
    with pytest.raises(ImportError, match=r"make setup.*setup\.py build_ext --inplace"):
        felzenszwalb_3d(np.zeros((2, 2, 2)))


# ---------------------------------------------------------------- post-processing (step 6)

def test_foreground_mask_keeps_the_largest_component_with_holes_filled():
    image = np.zeros((12, 12))
    image[2:9, 2:9] = 100.0
    image[4:6, 4:6] = 0.0     # hole inside the body
    image[10:12, 10:12] = 90  # separate blob
    mask = gen.foreground_mask_2d(image)
    expected = np.zeros((12, 12), dtype=bool)
    expected[2:9, 2:9] = True
    np.testing.assert_array_equal(mask, expected)
    assert not gen.foreground_mask_2d(np.full((5, 5), 10.0)).any()  # threshold is strict


def test_mask_supervoxels_moves_label_zero_and_clears_background():
    labels = np.array([[[0, 1], [2, 0]]])
    mask = np.array([[[True, True], [False, True]]])
    np.testing.assert_array_equal(gen.mask_supervoxels(labels, mask), [[[3, 1], [0, 3]]])


def test_release_spacing_order_and_rescaling():
    geometry = Geometry(spacing=(0.7, 0.8, 3.0), origin=(0, 0, 0),
                        direction=tuple(np.eye(3).ravel()))
    assert gen.header_spacing_release_order(geometry) == (3.0, 0.7, 0.8)
    scaled = gen.rescale_to_255(np.array([-5.0, 0.0, 15.0]))
    np.testing.assert_allclose(scaled, [0.0, 63.75, 255.0])
    assert not gen.rescale_to_255(np.full((2, 2, 2), 3.0)).any()


# ---------------------------------------------------------------- dataset generation / CLI

GEOMETRY = Geometry(spacing=(1.5, 1.5, 4.0), origin=(-10.0, 5.0, 2.0),
                    direction=(0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0))


def body_volume(seed: int) -> np.ndarray:
    """(4, 20, 20): a noisy bright body on a zero background."""
    rng = np.random.default_rng(seed)
    image = np.zeros((4, 20, 20), dtype=np.float32)
    image[:, 3:17, 4:16] = 100 + 40 * rng.random((4, 14, 12))
    image[:, 8:12, 8:12] += 80
    return image


@pytest.fixture()
def dataset(tmp_path):
    for index in (0, 2):
        write_volume(body_volume(index), GEOMETRY, str(tmp_path / f"image_{index}.nii.gz"))
    (tmp_path / "image_x.nii.gz").write_text("ignored: not image_<integer>")
    return tmp_path


def test_generate_writes_masked_supervoxels_with_the_image_geometry(dataset):
    written = gen.generate_supervoxels(str(dataset), 20, progress=False)
    out_dir = dataset / "supervoxels_20"
    assert written == [str(out_dir / "superpix-MIDDLE_0.nii.gz"),
                       str(out_dir / "superpix-MIDDLE_2.nii.gz")]
    labels, geometry = read_volume(written[1], dtype=np.int32)
    assert geometry == GEOMETRY
    image = body_volume(2)
    expected = gen.supervoxels_for_volume(image, (4.0, 1.5, 1.5), 20)
    np.testing.assert_array_equal(labels, expected)
    body = image > 0
    assert not labels[~body].any() and labels[body].min() >= 1 and labels.max() >= 2


def test_generate_skips_done_volumes_unless_overwrite(dataset):
    first = gen.generate_supervoxels(str(dataset), 30, progress=False)
    stamp = os.stat(first[0]).st_mtime_ns
    assert gen.generate_supervoxels(str(dataset), 30, progress=False) == []
    assert os.stat(first[0]).st_mtime_ns == stamp
    assert gen.generate_supervoxels(str(dataset), 30, overwrite=True, progress=False) == first
    assert sorted(os.listdir(dataset / "supervoxels_30")) == ["superpix-MIDDLE_0.nii.gz",
                                                              "superpix-MIDDLE_2.nii.gz"]


def test_cli_runs_and_reports(dataset, capsys):
    assert gen.main(["--data-dir", str(dataset), "--min-size", "25", "--scale", "2"]) == 0
    assert "wrote 2 supervoxel volume(s)" in capsys.readouterr().out
    assert (dataset / "supervoxels_25" / "superpix-MIDDLE_2.nii.gz").is_file()


def test_generate_rejects_bad_input(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a directory"):
        gen.generate_supervoxels(str(tmp_path / "missing"), 20)
    with pytest.raises(FileNotFoundError, match="no image_<i>.nii.gz"):
        gen.generate_supervoxels(str(tmp_path), 20)
    with pytest.raises(ValueError, match="min_size"):
        gen.generate_supervoxels(str(tmp_path), 0)
    with pytest.raises(SystemExit):
        gen.main(["--data-dir", str(tmp_path)])  # --min-size is required


def test_compiled_core_rejects_a_malformed_neighbourhood():
    extension = load_extension()
    offsets, factors = neighbour_weight_factors((1.0, 1.0, 1.0))
    backwards = offsets.copy()
    backwards[0] = (0, 0, -1)
    with pytest.raises(ValueError, match="not a forward neighbour step"):
        extension.segment_volume(np.zeros((2, 2, 2)), backwards, factors, 1.0, 1)
    with pytest.raises(ValueError, match=r"expected \(13, 3\) offsets"):
        extension.segment_volume(np.zeros((2, 2, 2)), offsets[:5].copy(), factors, 1.0, 1)


# ---------------------------------------------------------------- damaged or stale input

@pytest.mark.parametrize("fill", ["all NaN", "one inf"])
def test_non_finite_image_is_refused_and_nothing_is_written(tmp_path, capsys, fill):
    image = body_volume(0)
    if fill == "all NaN":
        image[:] = np.nan
    else:
        image[2, 10, 10] = np.inf
    path = tmp_path / "image_0.nii.gz"
    write_volume(image, GEOMETRY, str(path))
    on_disk = np.asarray(nib.load(str(path)).dataobj)     # a second reader: really on disk
    assert np.count_nonzero(~np.isfinite(on_disk)) == (image.size if fill == "all NaN" else 1)
    count = "1600 non-finite voxel\\(s\\) of 1600 \\(1600 NaN" if fill == "all NaN" else \
        "1 non-finite voxel\\(s\\) of 1600 \\(0 NaN, 1 infinite"
    with pytest.raises(ValueError, match=f"image_0\\.nii\\.gz has {count}"):
        gen.generate_supervoxels(str(tmp_path), 20, progress=False)
    with pytest.raises(ValueError, match="the image to segment has"):
        gen.supervoxels_for_volume(image, (4.0, 1.5, 1.5), 20)
    with pytest.raises(SystemExit) as exit_info:
        gen.main(["--data-dir", str(tmp_path), "--min-size", "20"])
    assert exit_info.value.code == 2   # a user error: one line, exit status 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "Traceback" not in error
    assert error.startswith("python -m fafnet.supervoxels.generate: error: ")
    assert str(path) in error
    assert not (tmp_path / "supervoxels_20" / "superpix-MIDDLE_0.nii.gz").exists()


def test_truncated_image_is_refused_naming_it(dataset, capsys):
    path = dataset / "image_2.nii.gz"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(SystemExit):
        gen.main(["--data-dir", str(dataset), "--min-size", "20"])
    error = capsys.readouterr().err
    assert f"{path}: damaged or truncated gzip stream" in error and error.count("\n") == 1


def test_output_older_than_its_image_is_recomputed(dataset):
    first = gen.generate_supervoxels(str(dataset), 20, progress=False)
    # image_0 is pre-processed again: its supervoxels are stale, those of image_2 are not
    write_volume(body_volume(5), GEOMETRY, str(dataset / "image_0.nii.gz"))
    later = os.stat(first[0]).st_mtime_ns + 10**9
    os.utime(dataset / "image_0.nii.gz", ns=(later, later))
    assert gen.generate_supervoxels(str(dataset), 20, progress=False) == [first[0]]
    labels, _ = read_volume(first[0], dtype=np.int32)
    np.testing.assert_array_equal(labels, gen.supervoxels_for_volume(body_volume(5), (4.0, 1.5, 1.5), 20))
