"""The model interface and registry: a second model, added by one module
(tests/tiny_model.py) and one registry line, trains and evaluates through the real commands;
snapshots name their model and another model's weights are refused by name."""
import json
import os

import pytest
import torch

from fafnet.models import MODELS, FAFNet, build_model, get_model_spec, model_options, register_model
from fafnet.runtime.snapshots import SnapshotError, final_path, load_for_evaluation
from tests.test_experiment import base_config, run_test, run_train, write_phantom
from tests.tiny_model import TINY, TinyPrototypeNet


@pytest.fixture(scope="module")
def tiny_registered():
    register_model(TINY)   # the registry line
    yield TINY
    MODELS.pop(TINY.name)


@pytest.fixture(scope="module")
def tiny_run(tiny_registered, tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("phantom"))
    write_phantom(data_dir)
    runs_dir = str(tmp_path_factory.mktemp("runs"))
    run = run_train(base_config(data_dir, runs_dir, model="tiny", pretrained_weights="none",
                                n_steps=2, snapshot_interval=2))
    return run, data_dir, runs_dir


def test_the_registry_builds_by_name_and_names_the_known_models(tiny_registered):
    model = build_model([33, 33], torch.device("cpu"), name="fafnet")
    assert isinstance(model, FAFNet) and model.image_encoder() is model.encoder
    assert isinstance(build_model([33, 33], torch.device("cpu"), name="tiny"), TinyPrototypeNet)
    assert get_model_spec("fafnet").options == {"zero_init_residual": False, "threshold_head_init_scale": 1.0}
    with pytest.raises(ValueError, match=r"model='unet' is not a registered model; registered: fafnet, tiny"):
        build_model([33, 33], torch.device("cpu"), name="unet")
    with pytest.raises(ValueError, match="already registered"):
        register_model(type(TINY)("tiny", TinyPrototypeNet))


def test_another_models_option_is_an_error_not_ignored(tiny_registered):
    assert model_options("fafnet", {"zero_init_residual": True}) == {
        "zero_init_residual": True, "threshold_head_init_scale": 1.0}
    assert model_options("tiny", {"zero_init_residual": False, "threshold_head_init_scale": 1.0}) == {}
    with pytest.raises(ValueError, match=r"threshold_head_init_scale=0.05 is an option of model 'fafnet'; "
                                         r"model='tiny' does not take it"):
        model_options("tiny", {"threshold_head_init_scale": 0.05})


def test_the_tiny_model_trains_two_steps_through_train_py(tiny_run):
    run, _, _ = tiny_run
    run_dir = run.observers[0].dir
    assert json.load(open(os.path.join(run_dir, "config.json")))["model"]["name"] == "tiny"
    metrics = json.load(open(os.path.join(run_dir, "metrics.json")))
    # The step, logs and curves carry the tiny model's own losses, and nothing of FAF-Net's.
    assert {"loss", "query_loss", "scale_loss", "grad_norm"} <= set(metrics)
    assert "align_loss" not in metrics and metrics["query_loss"]["steps"] == [1, 2]
    for total, query, scale in zip(*(metrics[k]["values"] for k in ("loss", "query_loss", "scale_loss"))):
        assert total == pytest.approx(query + scale, rel=1e-6)
    assert "(query " in open(os.path.join(run_dir, "train.log")).read()
    snapshot = torch.load(final_path(run_dir), weights_only=True)
    assert snapshot["model_name"] == "tiny" and snapshot["step"] == 2
    assert set(snapshot["model"]) == set(TinyPrototypeNet((65, 65)).state_dict())


def test_the_tiny_model_evaluates_through_test_py(tiny_run):
    run, data_dir, runs_dir = tiny_run
    evaluation = run_test(base_config(data_dir, runs_dir, model="tiny", checkpoint=run.observers[0].dir,
                                      save_figures=False))
    results = json.load(open(os.path.join(evaluation.observers[0].dir, "results.json")))
    assert results["protocol"]["model"] == "tiny"
    scores = [entry["dice_mean"] for entry in results["classes"].values()]
    assert len(scores) == 2 and all(0.0 <= score <= 1.0 for score in scores)
    assert results["mean_dice"] == pytest.approx(sum(scores) / 2)


def test_a_snapshot_is_refused_by_a_model_of_another_name(tiny_run):
    run, data_dir, runs_dir = tiny_run
    fafnet = build_model([65, 65], torch.device("cpu"))
    with pytest.raises(SnapshotError, match=r"holds weights of model 'tiny', not of model='fafnet'; "
                                            r"evaluate it with model=tiny"):
        load_for_evaluation(fafnet, final_path(run.observers[0].dir), [65, 65])
    with pytest.raises(ValueError, match="holds weights of model 'tiny'"):
        run_test(base_config(data_dir, runs_dir, checkpoint=final_path(run.observers[0].dir)))
