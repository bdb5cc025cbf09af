"""ADNet and SSL-ALPNet through the real commands: train.py's and test.py's experiments and
segment, on the phantom (resampled in-plane to 33 x 33, to keep two ResNet-101s quick); each
records its model and options everywhere FAF-Net does."""
import json
import os

import pytest
import torch

from fafnet.cli import segment
from tests.helpers import ORGAN_SLICES, base_config, run_test, run_train

SMALL = {"resample_in_plane": [33, 33], "image_size": [33, 33]}


@pytest.fixture(scope="module", params=["adnet", "ssl_alpnet"])
def trained(request, phantom, tmp_path_factory):
    """(model name, its training run folder, runs_dir) after two steps from a random start."""
    runs_dir = str(tmp_path_factory.mktemp(f"runs_{request.param}"))
    run = run_train(base_config(phantom, runs_dir, model=request.param, pretrained_weights="none", min_size=20,
                                model_options={"zero_init_residual": True}, n_steps=2, snapshot_interval=2, **SMALL))
    return request.param, run.observers[0].dir, runs_dir


def test_training_records_the_model_and_its_options(trained):
    name, run_dir, _ = trained
    snapshot = torch.load(os.path.join(run_dir, "snapshots", "final.pth"), weights_only=True)
    assert snapshot["model_name"] == name and snapshot["model_options"] == {"zero_init_residual": True}
    metrics = json.load(open(os.path.join(run_dir, "metrics.json")))
    assert {"loss", "query_loss", "align_loss", "grad_norm"} <= set(metrics)
    assert metrics["query_loss"]["steps"] == [1, 2]
    if name == "adnet":
        assert "threshold_loss" in metrics and "proto_loss" not in metrics


def test_evaluation_builds_the_checkpoints_model(trained, phantom):
    name, run_dir, runs_dir = trained
    evaluation = run_test(base_config(phantom, runs_dir, model=name, checkpoint=run_dir, save_figures=False, **SMALL))
    results = json.load(open(os.path.join(evaluation.observers[0].dir, "results.json")))
    assert results["protocol"]["model"] == name
    assert results["protocol"]["model_options"] == {"zero_init_residual": True}
    assert results["protocol"]["training"]["model"] == name
    assert all(0.0 <= entry["dice_mean"] <= 1.0 for entry in results["classes"].values())
    # The checkpoint's model decides: FAF-Net's name on the command line is refused.
    with pytest.raises(ValueError, match=f"holds weights of model '{name}', not of model='fafnet'"):
        run_test(base_config(phantom, runs_dir, checkpoint=run_dir, **SMALL))
    with pytest.raises(ValueError, match="was trained with zero_init_residual=True"):
        run_test(base_config(phantom, runs_dir, model=name, checkpoint=run_dir,
                             model_options={"zero_init_residual": False}, **SMALL))


def test_segment_runs_the_checkpoints_model(trained, phantom, tmp_path, capsys):
    name, run_dir, _ = trained
    out = tmp_path / "out"
    status = segment.main(["--checkpoint", run_dir, "--support-image", f"{phantom}/image_0.nii.gz",
                           "--support-mask", f"{phantom}/label_0.nii.gz", "--query", f"{phantom}/image_1.nii.gz",
                           "--query-range", f"{ORGAN_SLICES[0]}:{ORGAN_SLICES[-1] + 1}", "--label", "6",
                           "--out", str(out)])
    assert status == 0, capsys.readouterr().err
    record = json.load(open(out / "image_1.json"))
    assert record["checkpoint"]["model"] == name
    assert record["checkpoint"]["model_options"] == {"zero_init_residual": True}
    assert (out / "image_1_labels.nii.gz").is_file()
