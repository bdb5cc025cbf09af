"""The pre-processed cardiac MRI the FSMIS community distributes, read as it is shipped
(1-based numbers, float64 images, raw labels 200/500/600, int32 supervoxels without geometry
beside the image folder).

The data is not part of the repository: these tests look for it in $FAFNET_REAL_CMR or in
../shared/real/CMR beside the repository, and are skipped when it is absent.
"""
import json
import os

import nibabel as nib
import numpy as np
import pytest
import torch

from fafnet.cli import evaluate, train
from fafnet.datasets.specs import get_dataset_spec
from fafnet.episodes.evaluation import TestDataset
from fafnet.episodes.training import TrainDataset
from fafnet.episodes.volumes import open_layout
from fafnet.evaluation.metrics import binary_confusion
from fafnet.models import build_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REAL_CMR = os.path.abspath(os.environ.get("FAFNET_REAL_CMR") or os.path.join(ROOT, "..", "shared", "real", "CMR"))
DATA_DIR = os.path.join(REAL_CMR, "cmr_MR_normalized")

pytestmark = pytest.mark.skipif(
    not os.path.isdir(DATA_DIR),
    reason=f"the community's pre-processed CMR is not here ({DATA_DIR}; set FAFNET_REAL_CMR to its folder)")


def test_the_shipped_layout_is_read_and_folds_name_the_right_files():
    layout = open_layout(DATA_DIR, spec=get_dataset_spec("CMR"))    # 35 volumes, as the folds need
    assert layout.numbers == list(range(1, 36)) and layout.ignored == []   # classmap_*.json silently
    folds = get_dataset_spec("CMR").folds()
    assert [layout[p].name for p in folds[0]] == [f"image_{i}.nii.gz" for i in range(1, 9)]
    assert [layout[p].name for p in folds[4]] == [f"image_{i}.nii.gz" for i in range(29, 36)] + ["image_1.nii.gz"]
    assert layout.supervoxel_dir(1000) == os.path.join(os.path.dirname(DATA_DIR), "supervoxels_1000")


def test_training_volumes_and_their_shipped_supervoxels_load_as_stored():
    train = TrainDataset(DATA_DIR, dataset="CMR", eval_fold=0, max_iters_per_load=2)
    assert [v.files.number for v in train.volumes] == list(range(9, 36))
    # The shipped supervoxels carry no geometry: used on their images' grids, noted once each.
    assert len(train.reader.notes) == 27 and all("no geometry" in n for _, n in train.reader.notes)
    stored = np.asanyarray(nib.load(os.path.join(REAL_CMR, "supervoxels_1000", "superpix-MIDDLE_9.nii.gz")).dataobj).T
    np.testing.assert_array_equal(train.volumes[0].labels, stored)
    episode = train[0]
    assert episode["support_images"].shape == (1, 3, 256, 256) and episode["query_labels"].sum() >= 200


def hand_reference(support_number, query_numbers, raw_value):
    """The inputs of an evaluation of one class written out from the files, on the grid halved
    in-plane: images averaged over 2 x 2 blocks, labels taking each block's lower right pixel;
    z-score, slices holding the class, support slices at int(f * count), chunks by linspace:
    (support slices, [(support image, support mask)] per part, per query volume [(query
    images, labels)] per chunk), as the network takes them ([k, 3, H, W] and [k, H, W])."""
    def read(number):
        image = nib.load(os.path.join(DATA_DIR, f"image_{number}.nii.gz")).get_fdata().T
        image = image.reshape(len(image), 128, 2, 128, 2).mean(axis=(2, 4)).astype(np.float32)
        label = np.asanyarray(nib.load(os.path.join(DATA_DIR, f"label_{number}.nii.gz")).dataobj).T == raw_value
        label = label[:, 1::2, 1::2]
        mean, std = float(image.mean(dtype=np.float64)), float(image.std(dtype=np.float64))
        return ((image - mean) / std).astype(np.float32), label

    def network(images):
        return np.repeat(images[:, None], 3, axis=1)

    image, label = read(support_number)
    with_class = [z for z in range(len(label)) if label[z].any()]
    support_slices = [with_class[int(f * len(with_class))] for f in (1 / 6, 1 / 2, 5 / 6)]
    supports = [(network(image[[z]]), label[[z]].astype(np.float32)) for z in support_slices]
    queries = []
    for number in query_numbers:
        q_image, q_label = read(number)
        slices = [z for z in range(len(q_label)) if q_label[z].any()]
        edges = np.linspace(0, len(slices), 4).astype(int)
        queries.append([(network(q_image[slices[start:end]]), q_label[slices[start:end]].astype(np.int64))
                        for start, end in zip(edges[:-1], edges[1:])])
    return support_slices, supports, queries


def test_untrained_evaluation_of_one_class_matches_a_hand_computed_reference():
    """On the grid resampled to 128 x 128 (the resampling of the reference is written out by
    hand too): the evaluation's network inputs and labels, chunk by chunk, are the reference's
    bit for bit, so the untrained model's counts are the reference's; the model runs the first
    query volume (a ResNet-101 pass per slice is the cost of this test)."""
    dataset = TestDataset(DATA_DIR, dataset="CMR", eval_fold=0, supp_idx=2, test_classes=[2],
                          resample_in_plane=[128, 128])
    support = dataset.support(2)                       # LV blood pool, raw value 500
    queries = [q for q in dataset.queries(2)][:2]
    assert support["image_name"] == "image_3.nii.gz"
    assert [q["image_name"] for q in queries] == ["image_1.nii.gz", "image_2.nii.gz"]
    slices, supports, reference = hand_reference(3, [1, 2], 500)
    assert support["slice_indices"] == slices
    for part, (image, mask) in enumerate(supports):
        np.testing.assert_array_equal(support["images"][part:part + 1].numpy(), image)
        np.testing.assert_array_equal(support["masks"][part:part + 1].numpy(), mask)
    for query, chunks in zip(queries, reference):
        assert len(query["chunks"]) == len(chunks) == 3
        for (start, end), (images, labels) in zip(query["chunks"], chunks):
            np.testing.assert_array_equal(query["images"][start:end].numpy(), images)
            np.testing.assert_array_equal(query["labels"][start:end].numpy(), labels)
    torch.manual_seed(0)
    model = build_model("fafnet", [128, 128]).eval()
    query, chunks = queries[0], reference[0]
    with torch.no_grad():
        predicted = [(model.predict(support["images"][part:part + 1], support["masks"][part:part + 1],
                                    query["images"][start:end], batch_size=1) > 0.5).numpy()
                     for part, (start, end) in enumerate(query["chunks"])]
    ours = binary_confusion(np.concatenate(predicted), query["labels"].numpy())
    assert ours == binary_confusion(np.concatenate(predicted), np.concatenate([labels for _, labels in chunks]))
    tp, _, fn = ours
    assert tp + fn > 0


def test_train_and_test_commands_run_on_the_shipped_layout_unchanged(tmp_path):
    """The experiments with the data as shipped (data_root only): a few self-supervised steps
    on the shipped supervoxels, then an evaluation of one class (resampled to 32 x 32 and 8
    query slices per pass, to stay fast on a CPU: the 7 query volumes hold about 70 slices of it)."""
    common = {"data_root": REAL_CMR, "runs_dir": str(tmp_path / "runs"), "device": "cpu",
              "pretrained_weights": "none", "resample_in_plane": [32, 32], "test_classes": [2]}
    run = train.experiment().run(named_configs=["CMR"], config_updates={
        **common, "n_steps": 2, "snapshot_interval": 2, "min_size": 12, "num_workers": 0})
    assert run.status == "COMPLETED" and run.config["data_dir"] == DATA_DIR
    result = evaluate.experiment().run(named_configs=["CMR"], config_updates={
        **common, "checkpoint": run.observers[0].dir, "save_figures": False, "eval_batch_size": 8})
    results = json.load(open(os.path.join(result.observers[0].dir, "results.json")))
    assert results["fold_images"][0] == "image_1.nii.gz"
    assert results["protocol"]["resample_in_plane"] == [32, 32]
    assert results["supports"]["2"]["support_image"] == "image_3.nii.gz"
    assert os.path.isfile(os.path.join(result.observers[0].dir, "predictions", "query_1_all_classes.nii.gz"))
