"""The dataset folder layout (fafnet/io/layout.py): the community's 1-based and gapped numbering,
the release's supervoxel place, the files a loader must not miss, and label and supervoxel
files checked against their image's voxel grid (data/nifti_io.on_reference_grid)."""
import glob
import logging
import os
import re
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch

from fafnet.io.layout import DatasetLayout
from fafnet.io.nifti import NO_GEOMETRY, Geometry, on_reference_grid, read_volume, write_volume
from fafnet.preprocessing.common import flip_rows
from fafnet.episodes.evaluation import TestDataset
from fafnet.episodes.training import TrainDataset
from fafnet.episodes.volumes import count_volumes, open_layout, slice_class_areas
from fafnet.evaluation.metrics import binary_confusion
from fafnet.models import build_model

Z, H, W = 10, 32, 32
# Ten volumes numbered as the CHAOS-T2 files are shipped: from 1, with gaps.
GAPPED = [1, 2, 3, 5, 8, 10, 13, 15, 19, 21]
GEOMETRY = Geometry((1.25, 1.25, 8.0), (-10.0, 20.0, 5.0), (0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0))


def volume_arrays(seed):
    """image float32, labels (SABS ids 1 and 6 on slices 2..7, position varying with the
    seed) and supervoxels (quadrant ids 1..4 on every slice)."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[:H, :W]
    label = np.zeros((Z, H, W), np.uint8)
    for z in range(2, 8):
        label[z][(rows - 10 - seed % 3) ** 2 + (cols - 10) ** 2 <= 25] = 1
        label[z][(rows - 22) ** 2 + (cols - 21 - z % 2) ** 2 <= 36] = 6
    image = (100 + 60.0 * (label == 1) + 120.0 * (label == 6) + rng.normal(0, 5, (Z, H, W))).astype(np.float32)
    supervoxels = np.broadcast_to(1 + (rows >= H // 2) * 2 + (cols >= W // 2), (Z, H, W)).astype(np.int32)
    return image, label, supervoxels


def write_folder(data_dir, numbers, supervoxels_beside=False):
    """A dataset folder with image_<i> / label_<i> for `numbers`; supervoxels inside it or,
    as the release keeps them, beside it. Returns {number: arrays}."""
    os.makedirs(data_dir, exist_ok=True)
    sv_root = os.path.dirname(data_dir) if supervoxels_beside else data_dir
    arrays = {}
    for seed, number in enumerate(numbers):
        image, label, supervoxels = volume_arrays(seed)
        write_volume(image, GEOMETRY, os.path.join(data_dir, f"image_{number}.nii.gz"))
        write_volume(label, GEOMETRY, os.path.join(data_dir, f"label_{number}.nii.gz"))
        write_volume(supervoxels, GEOMETRY,
                     os.path.join(sv_root, "supervoxels_100", f"superpix-MIDDLE_{number}.nii.gz"))
        arrays[number] = (image, label, supervoxels)
    return arrays


@pytest.fixture(scope="module")
def gapped(tmp_path_factory):
    """The community's layout: 1-based gapped numbers, supervoxels beside the image folder,
    a class map that must be ignored silently."""
    root = str(tmp_path_factory.mktemp("community"))
    data_dir = os.path.join(root, "chaos_MR_T2_normalized")
    arrays = write_folder(data_dir, GAPPED, supervoxels_beside=True)
    with open(os.path.join(data_dir, "classmap_1.json"), "w") as f:
        f.write('{"BG": {}}')
    return data_dir, arrays


@pytest.fixture(scope="module")
def renumbered(gapped, tmp_path_factory):
    """The same volumes renumbered 0..9 in this project's layout (supervoxels inside)."""
    data_dir = str(tmp_path_factory.mktemp("project") / "data")
    source, _ = gapped
    os.makedirs(os.path.join(data_dir, "supervoxels_100"))
    for position, number in enumerate(GAPPED):
        for kind in ("image", "label"):
            shutil.copy(os.path.join(source, f"{kind}_{number}.nii.gz"),
                        os.path.join(data_dir, f"{kind}_{position}.nii.gz"))
        shutil.copy(os.path.join(os.path.dirname(source), "supervoxels_100", f"superpix-MIDDLE_{number}.nii.gz"),
                    os.path.join(data_dir, "supervoxels_100", f"superpix-MIDDLE_{position}.nii.gz"))
    return data_dir


# ----------------------------------------------------------------------------- the layout

def test_volumes_are_ordered_by_number_and_folds_are_positions(gapped):
    data_dir, _ = gapped
    layout = DatasetLayout(data_dir)
    assert layout.numbers == GAPPED                       # 10 after 8: numeric, not by name
    assert [v.position for v in layout] == list(range(10))
    assert layout[5].name == "image_10.nii.gz" and layout[5].label.endswith("label_10.nii.gz")
    assert layout.ignored == []                            # classmap_1.json: silently
    # Fold 4 of 10 volumes is positions {8, 9, 0}: files 19, 21 and 1.
    test = TestDataset(data_dir, dataset="SYNTHETIC", eval_fold=4, supp_idx=1, test_classes=[1, 6])
    assert test.fold_volumes == [0, 8, 9]
    assert [test.file_name(v) for v in test.fold_volumes] == ["image_1.nii.gz", "image_19.nii.gz",
                                                             "image_21.nii.gz"]
    assert test.support_volume == 8 and test.support(1)["image_name"] == "image_19.nii.gz"
    train = TrainDataset(data_dir, dataset="SYNTHETIC", eval_fold=4, supervoxel_min_size=100, min_size=10)
    assert train.volume_indices == list(range(1, 8))
    assert [v.files.number for v in train.volumes] == GAPPED[1:8]
    assert os.path.dirname(train.source_files()[1]) == os.path.join(os.path.dirname(data_dir), "supervoxels_100")


def test_gapped_numbering_gives_exactly_the_evaluation_of_the_renumbered_folder(gapped, renumbered):
    """Same order, same support slices, same arrays and so the same TP/FP/FN: the protocol
    depends on positions only."""
    data_dir, _ = gapped
    torch.manual_seed(0)
    model = build_model("fafnet", [H, W]).eval()
    for fold in range(5):
        a = TestDataset(data_dir, dataset="SYNTHETIC", eval_fold=fold, supp_idx=1, test_classes=[1, 6])
        b = TestDataset(renumbered, dataset="SYNTHETIC", eval_fold=fold, supp_idx=1, test_classes=[1, 6])
        assert a.fold_volumes == b.fold_volumes
        for class_id in (1, 6):
            sa, sb = a.support(class_id), b.support(class_id)
            assert sa["slice_indices"] == sb["slice_indices"] and torch.equal(sa["images"], sb["images"])
            for qa, qb in zip(a.queries(class_id), b.queries(class_id)):
                assert qa["volume_index"] == qb["volume_index"] and qa["chunks"] == qb["chunks"]
                assert qa["image_number"] == GAPPED[qa["volume_index"]]
                assert qb["image_number"] == qb["volume_index"]
                assert torch.equal(qa["images"], qb["images"]) and torch.equal(qa["labels"], qb["labels"])
        if fold == 0:   # one fold through the network: identical counts
            with torch.no_grad():
                for ds in (a, b):
                    support, query = ds.support(6), next(ds.queries(6))
                    start, end = query["chunks"][1]
                    p = model.predict(support["images"][1:2], support["masks"][1:2], query["images"][start:end])
                    ds.counts = binary_confusion((p > 0.5).numpy(), query["labels"][start:end].numpy())
            assert a.counts == b.counts


def release_reference(data_dir, fold, supp_idx, class_id, n_part=3):
    """The release's dataloader, written out: glob image_*, sort by the number in the name,
    keep the fold's positions; support slices int(f * count), query chunks by linspace."""
    images = sorted(glob.glob(os.path.join(data_dir, "image_*")),
                    key=lambda p: int(os.path.basename(p).split("_")[-1].split(".nii.gz")[0]))
    step = len(images) // 5
    positions = list(range(fold * step, (fold + 1) * step + 1)) if fold < 4 else \
        list(range(4 * step, len(images))) + [0]
    files = [images[i] for i in sorted(positions)]
    labels = [np.asanyarray(nib.load(p.replace("image_", "label_")).dataobj).T for p in files]
    support = labels[supp_idx]
    with_class = [z for z in range(support.shape[0]) if (support[z] == class_id).any()]
    support_slices = [with_class[int(f * len(with_class))] for f in (1 / 6, 1 / 2, 5 / 6)]
    chunks = {}
    for file, label in zip(files, labels):
        if file == files[supp_idx]:
            continue
        n = int((label == class_id).any(axis=(1, 2)).sum())
        edges = np.linspace(0, n, n_part + 1).astype(int)
        chunks[os.path.basename(file)] = list(zip(edges[:-1].tolist(), edges[1:].tolist()))
    return os.path.basename(files[supp_idx]), support_slices, chunks


@pytest.mark.parametrize("fold", [0, 4])
def test_protocol_on_gapped_numbers_matches_the_release_loader(gapped, fold):
    data_dir, _ = gapped
    ds = TestDataset(data_dir, dataset="SYNTHETIC", eval_fold=fold, supp_idx=2, test_classes=[1, 6])
    for class_id in (1, 6):
        support_name, support_slices, chunks = release_reference(data_dir, fold, 2, class_id)
        support = ds.support(class_id)
        assert (support["image_name"], support["slice_indices"]) == (support_name, support_slices)
        assert {q["image_name"]: q["chunks"] for q in ds.queries(class_id)} == chunks


def test_dot_nii_files_are_volumes_too(tmp_path):
    data_dir = str(tmp_path / "d")
    write_folder(data_dir, [0, 1, 2, 3, 4, 5])
    image, geometry = read_volume(os.path.join(data_dir, "image_5.nii.gz"))
    os.remove(os.path.join(data_dir, "image_5.nii.gz"))
    write_volume(image, geometry, os.path.join(data_dir, "image_5.nii"))
    layout = DatasetLayout(data_dir)
    assert len(layout) == 6 and layout[5].image.endswith("image_5.nii")


@pytest.mark.parametrize("extra, message", [
    ("image_5.nii", r"two volume files for volume number 5 .*image_5\.nii and image_5\.nii\.gz"),
    ("image_05.nii.gz", r"two volume files for volume number 5 .*image_05\.nii\.gz and image_5\.nii\.gz"),
    ("image_5_old.nii.gz", r"image_5_old\.nii\.gz: a volume file must be named image_<i>"),
    ("Image_6.nii.gz", r"Image_6\.nii\.gz: a volume file must be named"),
])
def test_files_the_loader_would_misread_are_errors_naming_them(tmp_path, extra, message):
    data_dir = str(tmp_path / "d")
    write_folder(data_dir, [0, 1, 2, 3, 4, 5])
    shutil.copy(os.path.join(data_dir, "image_5.nii.gz"), os.path.join(data_dir, extra))
    with pytest.raises(ValueError, match=message):
        DatasetLayout(data_dir)


def test_unpaired_files_and_counts_are_errors_and_strays_are_listed(tmp_path, caplog):
    data_dir = str(tmp_path / "d")
    write_folder(data_dir, [1, 2, 3, 4, 5, 6])
    os.remove(os.path.join(data_dir, "label_4.nii.gz"))
    with pytest.raises(FileNotFoundError, match=r"image_4\.nii\.gz has no label file .*label_4\.nii\.gz"):
        DatasetLayout(data_dir)
    shutil.copy(os.path.join(data_dir, "label_3.nii.gz"), os.path.join(data_dir, "label_4.nii.gz"))
    os.remove(os.path.join(data_dir, "image_6.nii.gz"))
    with pytest.raises(FileNotFoundError, match=r"label_6\.nii\.gz has no image file .*image_6\.nii\.gz"):
        DatasetLayout(data_dir)
    os.remove(os.path.join(data_dir, "label_6.nii.gz"))
    with open(os.path.join(data_dir, "notes.txt"), "w") as f:
        f.write("x")
    with caplog.at_level(logging.INFO, logger="fafnet"):
        assert count_volumes(data_dir, 5) == 5
    assert "ignored notes.txt" in caplog.text
    with pytest.raises(ValueError, match=r"holds 5 volumes but n_volumes=4: the folds would leave out image_5\.nii\.gz"):
        open_layout(data_dir, 4)
    with pytest.raises(ValueError, match=r"holds 5 volumes but n_volumes=6\. .*numbers 1, 2, 3, 4, 5"):
        open_layout(data_dir, 6)


def test_supervoxels_inside_or_beside_but_not_both(gapped, tmp_path):
    data_dir, _ = gapped
    layout = DatasetLayout(data_dir)
    beside = os.path.join(os.path.dirname(data_dir), "supervoxels_100")
    assert layout.supervoxel_dir(100) == beside
    with pytest.raises(FileNotFoundError, match=r"neither .*supervoxels_200 nor .*supervoxels_200 exists"):
        layout.supervoxel_dir(200)
    copy = str(tmp_path / "root" / "data")
    shutil.copytree(data_dir, copy)
    shutil.copytree(beside, str(tmp_path / "root" / "supervoxels_100"))
    shutil.copytree(beside, os.path.join(copy, "supervoxels_100"))
    with pytest.raises(ValueError, match=r"exist in two places, .*data/supervoxels_100 and .*root/supervoxels_100"):
        TrainDataset(copy, dataset="SYNTHETIC", supervoxel_min_size=100)
    shutil.rmtree(os.path.join(copy, "supervoxels_100"))
    os.remove(str(tmp_path / "root" / "supervoxels_100" / "superpix-MIDDLE_13.nii.gz"))
    with pytest.raises(FileNotFoundError, match=r"superpix-MIDDLE_13\.nii\.gz of .*image_13\.nii\.gz not found"):
        TrainDataset(copy, dataset="SYNTHETIC", supervoxel_min_size=100)


# ----------------------------------------------------------------------------- geometry

def mirrored_copy(source_dir, target_dir, name):
    """Copy the folder; store `name` mirrored in y with a header that says so (the same
    world positions)."""
    shutil.copytree(source_dir, target_dir)
    array, geometry = read_volume(os.path.join(source_dir, name), dtype=None)
    flipped, flipped_geometry = flip_rows(array, geometry)
    write_volume(flipped, flipped_geometry, os.path.join(target_dir, name))
    return flipped


def test_a_label_stored_mirrored_is_reoriented_and_scores_as_the_original(renumbered, tmp_path, caplog):
    copy = str(tmp_path / "mirrored")
    flipped = mirrored_copy(renumbered, copy, "label_1.nii.gz")
    assert not np.array_equal(flipped, volume_arrays(1)[1])
    with caplog.at_level(logging.INFO, logger="fafnet"):
        reoriented = TestDataset(copy, dataset="SYNTHETIC", eval_fold=0, supp_idx=0, test_classes=[1, 6])
    original = TestDataset(renumbered, dataset="SYNTHETIC", eval_fold=0, supp_idx=0, test_classes=[1, 6])
    np.testing.assert_array_equal(reoriented.volume(1).labels, original.volume(1).labels)
    assert re.search(r"1 file\(s\): stored with other axes \(x, y, z -> x, -y, z\): reoriented .*label_1", caplog.text)
    assert reoriented.reader.notes and reoriented.reader.notes[0][0].endswith("label_1.nii.gz")


def test_supervoxels_stored_mirrored_are_reoriented(renumbered, tmp_path):
    copy = str(tmp_path / "mirrored")
    name = os.path.join("supervoxels_100", "superpix-MIDDLE_3.nii.gz")
    rows = np.arange(H)[None, :, None]
    # Distinct ids per row so that a mirror shows.
    array = np.broadcast_to(1 + rows, (Z, H, W)).astype(np.int32)
    shutil.copytree(renumbered, copy)
    write_volume(array, GEOMETRY, os.path.join(copy, name))
    flipped, flipped_geometry = flip_rows(array, GEOMETRY)
    mirror = str(tmp_path / "mirror")
    shutil.copytree(copy, mirror)
    write_volume(flipped, flipped_geometry, os.path.join(mirror, name))
    a = TrainDataset(copy, dataset="SYNTHETIC", eval_fold=0, supervoxel_min_size=100, min_size=10)
    b = TrainDataset(mirror, dataset="SYNTHETIC", eval_fold=0, supervoxel_min_size=100, min_size=10)
    np.testing.assert_array_equal(a.volumes[0].labels, b.volumes[0].labels)


@pytest.mark.parametrize("change, message", [
    (lambda g: Geometry((2.5, 1.25, 8.0), g.origin, g.direction), r"spacing \(2\.5, 1\.25, 8\.0\) vs \(1\.25, 1\.25, 8\.0\)"),
    (lambda g: Geometry(g.spacing, (-10.0, 25.0, 5.0), g.direction), r"origin \(-10\.0, 25\.0, 5\.0\) vs \(-10\.0, 20\.0, 5\.0\)"),
])
def test_a_label_on_another_grid_is_refused_naming_both_files(renumbered, tmp_path, change, message):
    copy = str(tmp_path / "other")
    shutil.copytree(renumbered, copy)
    label, geometry = read_volume(os.path.join(copy, "label_2.nii.gz"), dtype=None)
    write_volume(label, change(geometry), os.path.join(copy, "label_2.nii.gz"))
    with pytest.raises(ValueError, match=r"label_2\.nii\.gz does not lie on the voxel grid of its image "
                                         r".*image_2\.nii\.gz \(" + message):
        TestDataset(copy, dataset="SYNTHETIC", eval_fold=0, supp_idx=0, test_classes=[1])


def test_a_file_without_geometry_is_used_on_its_images_grid_and_noted():
    array = np.arange(24).reshape(2, 3, 4)
    out, note = on_reference_grid(array, NO_GEOMETRY, GEOMETRY, (2, 3, 4), "sv", "image")
    assert out is array and "no geometry" in note
    with pytest.raises(ValueError, match=r"sv has shape \(2, 3, 4\) but its image image has shape \(2, 4, 3\)"):
        on_reference_grid(array, NO_GEOMETRY, GEOMETRY, (2, 4, 3), "sv", "image")
    with pytest.raises(ValueError, match="does not lie on the voxel grid"):
        on_reference_grid(array, NO_GEOMETRY, GEOMETRY, (2, 3, 4), "sv", "image", allow_no_geometry=False)


def test_a_permuted_label_is_transposed_onto_its_image():
    """Axes x and y swapped in storage, with a header that says so."""
    label = np.random.default_rng(0).integers(0, 3, (4, 5, 6))
    direction = np.asarray(GEOMETRY.direction).reshape(3, 3)[:, [1, 0, 2]]
    stored = np.ascontiguousarray(label.transpose(0, 2, 1))
    geometry = Geometry((GEOMETRY.spacing[1], GEOMETRY.spacing[0], GEOMETRY.spacing[2]), GEOMETRY.origin,
                        tuple(direction.ravel()))
    out, note = on_reference_grid(stored, geometry, GEOMETRY, label.shape, "label", "image")
    np.testing.assert_array_equal(out, label)
    assert "x, y, z -> y, x, z" in note


# ----------------------------------------------------------------------------- resampling

def test_resample_in_plane_halves_the_grid_linearly_for_images_nearest_for_labels(renumbered):
    test = TestDataset(renumbered, dataset="SYNTHETIC", eval_fold=0, supp_idx=0, test_classes=[1, 6],
                       resample_in_plane=[16, 16], image_size=[16, 16])
    volume = test.volume(1)
    image, label, _ = volume_arrays(1)
    block_mean = image.reshape(Z, 16, 2, 16, 2).mean(axis=(2, 4), dtype=np.float64)
    expected = (block_mean - block_mean.mean()) / block_mean.std()
    np.testing.assert_allclose(volume.image, expected, atol=1e-4)
    # Nearest: each new pixel takes one of its 2 x 2 source pixels (the lower right one).
    np.testing.assert_array_equal(volume.labels, label[:, 1::2, 1::2])
    # The new grid covers the same field of view: pixel 0's centre lies half an old pixel in.
    assert volume.geometry.spacing == (2.5, 2.5, 8.0)
    direction = np.asarray(GEOMETRY.direction).reshape(3, 3)
    np.testing.assert_allclose(volume.geometry.origin, np.asarray(GEOMETRY.origin) + direction @ [0.625, 0.625, 0.0])
    train = TrainDataset(renumbered, dataset="SYNTHETIC", eval_fold=0, supervoxel_min_size=100,
                         min_size=10, resample_in_plane=[16, 16])
    assert train.volumes[0].image.shape == (Z, 16, 16)
    classes, areas = slice_class_areas(train.volumes[0].labels)
    assert classes.tolist() == [1, 2, 3, 4] and (areas == 64).all()   # each quadrant 8 x 8
    with pytest.raises(ValueError, match=r"resample_in_plane=\[16, 16\] but image_size=\[32, 32\]"):
        TestDataset(renumbered, dataset="SYNTHETIC", resample_in_plane=[16, 16], image_size=[32, 32])
    with pytest.raises(ValueError, match=r"expected \(16, 16\) .*resample_in_plane=\[H, W\] resamples"):
        TestDataset(renumbered, dataset="SYNTHETIC", image_size=[16, 16])
