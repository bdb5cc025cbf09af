"""The model interface and registry (issue 26 section 2): a second model with an option of its
own, added by one module (tests/tiny_model.py, its decorator the only registry line) and
nothing else, trains, evaluates and segments through the real commands; its option is
recorded in the snapshot and results.json, evaluation and segment build it from the
checkpoint's option, a different value on the command line is an error, and another model's
weights are refused by name."""
import importlib
import json
import os
import sys

import pytest

from fafnet.cli import segment
from fafnet.models import FAFNet, MODELS, build_model, get_model, register_model, resolve_model_options
from fafnet.runtime.checkpoints import load_for_evaluation
from fafnet.runtime.snapshots import SnapshotError, final_path
from tests.helpers import ORGAN_SLICES, SIZE, base_config, model_state, run_test, run_train

WIDTH = 4   # the tiny model's option as trained here (its default is 8)


@pytest.fixture(scope="module")
def tiny():
    """tests/tiny_model.py imported (which registers model "tiny"), removed again afterwards."""
    sys.modules.pop("tests.tiny_model", None)
    module = importlib.import_module("tests.tiny_model")
    yield module
    MODELS.pop(module.NAME, None)
    sys.modules.pop("tests.tiny_model", None)


@pytest.fixture(scope="module")
def tiny_run(tiny, phantom, tmp_path_factory):
    """Two steps of the tiny model with model_options.width=4 through train.py's experiment:
    (the Sacred run, its runs_dir)."""
    runs_dir = str(tmp_path_factory.mktemp("runs_tiny"))
    run = run_train(base_config(phantom, runs_dir, model="tiny", model_options={"width": WIDTH},
                                pretrained_weights="none", n_steps=2, snapshot_interval=2))
    return run, runs_dir


@pytest.fixture(scope="module")
def tiny_evaluation(tiny_run, phantom):
    """test.py's experiment on the tiny run's folder, the model named and its options not given:
    results.json's contents."""
    run, runs_dir = tiny_run
    evaluation = run_test(base_config(phantom, runs_dir, model="tiny", checkpoint=run.observers[0].dir,
                                      save_figures=False))
    return json.load(open(os.path.join(evaluation.observers[0].dir, "results.json")))


def test_the_registry_builds_by_name_and_names_the_known_models(tiny):
    model = build_model("fafnet", [33, 33])
    assert isinstance(model, FAFNet) and model.image_encoder() is model.encoder
    built = build_model("tiny", [33, 33], options={"width": 3})
    assert isinstance(built, tiny.TinyPrototypeNet) and built.encoder[0].out_channels == 3
    assert build_model("tiny", [33, 33]).encoder[0].out_channels == 8          # the builder's default
    assert get_model("tiny").option_defaults() == {"width": 8}
    assert get_model("fafnet").option_defaults() == {"icm": True, "aff": True, "threshold": "adaptive",
                                                     "zero_init_residual": False, "threshold_head_init_scale": 1.0}
    assert list(MODELS)[-1] == "tiny" and {"fafnet", "adnet", "ssl_alpnet"} <= set(MODELS)
    with pytest.raises(ValueError, match=r"model='unet' is not a registered model; registered: fafnet, .*tiny"):
        build_model("unet", [33, 33])
    with pytest.raises(ValueError, match="a model named 'tiny' is already registered"):
        register_model("tiny")(lambda image_size, pretrained_weights=None, allow_partial_pretrained=False: None)
    with pytest.raises(TypeError, match="option 'depth' of its builder has no default"):
        register_model("tiny_without_default")(lambda image_size, *, depth: None)
    assert "tiny_without_default" not in MODELS


def test_a_models_options_are_its_own(tiny):
    assert resolve_model_options("fafnet", {"zero_init_residual": True})["zero_init_residual"] is True
    assert resolve_model_options("tiny", {"width": 4}) == {"width": 4}
    assert resolve_model_options("tiny", {}) == {"width": 8}
    # Another model's option is an error naming the model's own, not silently ignored.
    with pytest.raises(ValueError, match=r"config option model_options.zero_init_residual: model 'tiny' has no "
                                         r"option 'zero_init_residual' \(its options: width\)"):
        resolve_model_options("tiny", {"zero_init_residual": False})
    with pytest.raises(ValueError, match="config option model_options.width: model 'fafnet' has no option 'width'"):
        resolve_model_options("fafnet", {"width": 4})
    with pytest.raises(ValueError, match=r"config option model_options.width='4' must be an integer"):
        resolve_model_options("tiny", {"width": "4"})


def test_a_bad_option_of_the_tiny_model_fails_before_the_run(tiny, phantom, tmp_path):
    with pytest.raises(ValueError, match="model_options.width=True must be an integer"):
        run_train(base_config(phantom, str(tmp_path), model="tiny", model_options={"width": True},
                              pretrained_weights="none"))
    assert os.listdir(tmp_path) == []


def test_the_tiny_model_trains_two_steps_through_train_py(tiny_run, tiny):
    run, _ = tiny_run
    run_dir = run.observers[0].dir
    config = json.load(open(os.path.join(run_dir, "config.json")))
    assert config["model"] == "tiny" and config["model_options"] == {"width": WIDTH}
    metrics = json.load(open(os.path.join(run_dir, "metrics.json")))
    # The step, logs and curves carry the tiny model's own losses, and nothing of FAF-Net's.
    assert {"loss", "query_loss", "scale_loss", "grad_norm"} <= set(metrics)
    assert "align_loss" not in metrics and metrics["query_loss"]["steps"] == [1, 2]
    for total, query, scale in zip(*(metrics[k]["values"] for k in ("loss", "query_loss", "scale_loss"))):
        assert total == pytest.approx(query + scale, rel=1e-6)
    assert "(query " in open(os.path.join(run_dir, "train.log")).read()
    snapshot = model_state(final_path(run_dir))
    assert snapshot["model_name"] == "tiny" and snapshot["step"] == 2
    assert snapshot["model_options"] == {"width": WIDTH}        # the option, recorded with the weights
    expected = tiny.TinyPrototypeNet((SIZE, SIZE), WIDTH).state_dict()
    assert {k: v.shape for k, v in snapshot["model"].items()} == {k: v.shape for k, v in expected.items()}


def test_the_tiny_model_evaluates_through_test_py_with_its_checkpoints_option(tiny_evaluation):
    results = tiny_evaluation
    # Built from the checkpoint's width (none given): width-8 weights would not have loaded.
    assert results["protocol"]["model"] == "tiny" and results["protocol"]["model_options"] == {"width": WIDTH}
    assert results["protocol"]["training"]["model"] == "tiny"
    scores = [entry["dice_mean"] for entry in results["classes"].values()]
    assert len(scores) == 2 and all(0.0 <= score <= 1.0 for score in scores)
    assert results["mean_dice"] == pytest.approx(sum(scores) / 2)


def test_a_different_option_on_the_command_line_is_an_error(tiny_run, tiny_evaluation, phantom, tmp_path):
    run, _ = tiny_run
    checkpoint = run.observers[0].dir
    with pytest.raises(ValueError, match=rf"config option model_options.width=8: .*final.pth was trained with "
                                         rf"width={WIDTH}, and a checkpoint is evaluated with its own model options"):
        run_test(base_config(phantom, str(tmp_path), model="tiny", checkpoint=checkpoint,
                             model_options={"width": 8}, save_figures=False))
    # The same value as the checkpoint's is accepted (not an override, an agreement).
    same = run_test(base_config(phantom, str(tmp_path), model="tiny", checkpoint=checkpoint,
                                model_options={"width": WIDTH}, save_predictions=False, save_figures=False))
    results = json.load(open(os.path.join(same.observers[0].dir, "results.json")))
    assert results["mean_dice"] == tiny_evaluation["mean_dice"]


def test_the_tiny_model_segments_through_segment_with_its_checkpoints_option(tiny_run, phantom, tmp_path, capsys):
    run, _ = tiny_run
    out = tmp_path / "out"
    status = segment.main(["--checkpoint", run.observers[0].dir, "--support-image", f"{phantom}/image_0.nii.gz",
                           "--support-mask", f"{phantom}/label_0.nii.gz", "--query", f"{phantom}/image_1.nii.gz",
                           "--reference", f"{phantom}/label_1.nii.gz", "--query-range", f"{ORGAN_SLICES[0]}:{ORGAN_SLICES[-1] + 1}", "--label", "6",
                           "--out", str(out)])
    assert status == 0, capsys.readouterr().err
    record = json.load(open(out / "image_1.json"))
    assert record["checkpoint"]["model"] == "tiny" and record["checkpoint"]["model_options"] == {"width": WIDTH}
    assert 0.0 <= record["labels"]["6"]["dice"] <= 1.0
    assert (out / "image_1_labels.nii.gz").is_file()


def test_a_snapshot_is_refused_by_a_model_of_another_name(tiny_run, phantom, tmp_path):
    run, _ = tiny_run
    fafnet = build_model("fafnet", [SIZE, SIZE])
    with pytest.raises(SnapshotError, match=r"holds weights of model 'tiny', not of model='fafnet'; "
                                            r"evaluate it with model=tiny"):
        load_for_evaluation(fafnet, final_path(run.observers[0].dir), [SIZE, SIZE])
    with pytest.raises(ValueError, match="holds weights of model 'tiny'"):
        run_test(base_config(phantom, str(tmp_path), checkpoint=final_path(run.observers[0].dir)))
