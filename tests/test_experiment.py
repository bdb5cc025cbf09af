"""End to end: train.py and test.py as Sacred experiments on a tiny phantom dataset.

The phantom (written here, independent of data/synthetic): 10 volumes of 8 x 65 x 65, so
make_folds(10) gives folds of 3 volumes ({0, 1, 2} for fold 0); organs 1 (spleen) and 6
(liver) are discs on slices 2..5, and the supervoxel files cut each slice into quadrants, so
setting 2 leaves slices 0, 1, 6, 7 for self-supervised episodes.
"""
import importlib.util
import json
import math
import os
import sys

import numpy as np
import pytest
import torch

from data.nifti_io import Geometry, read_volume, write_volume
from utils import dice_score, iou_score, list_snapshots, snapshot_path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N_VOLUMES, DEPTH, SIZE = 10, 8, 65
ORGAN_SLICES = range(2, 6)
GEOMETRY = Geometry(spacing=(1.25, 1.25, 7.7), origin=(-40.0, -40.0, 10.0),
                    direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))


def _load_script(name: str):
    """Import train.py / test.py by path (a plain `import test` could find Python's own
    `test` package)."""
    spec = importlib.util.spec_from_file_location(f"fafnet_{name}_script", os.path.join(ROOT, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


train_script = _load_script("train")
test_script = _load_script("test")


def write_phantom(data_dir: str) -> None:
    rng = np.random.default_rng(0)
    rows, cols = np.mgrid[:SIZE, :SIZE]
    quadrants = 1 + (rows >= SIZE // 2) * 2 + (cols >= SIZE // 2)
    for index in range(N_VOLUMES):
        image = rng.normal(0.0, 5.0, (DEPTH, SIZE, SIZE)).astype(np.float32) + 100.0
        label = np.zeros((DEPTH, SIZE, SIZE), dtype=np.uint8)
        for class_id, centre, intensity in ((1, (20, 20), 180.0), (6, (42, 40), 240.0)):
            disc = (rows - centre[0] - index % 3) ** 2 + (cols - centre[1]) ** 2 <= 10 ** 2
            for z in ORGAN_SLICES:
                label[z][disc] = class_id
                image[z][disc] += intensity - 100.0
        supervoxels = np.broadcast_to(quadrants, (DEPTH, SIZE, SIZE)).astype(np.int16)
        write_volume(image, GEOMETRY, os.path.join(data_dir, f"image_{index}.nii.gz"))
        write_volume(label, GEOMETRY, os.path.join(data_dir, f"label_{index}.nii.gz"))
        write_volume(supervoxels, GEOMETRY,
                     os.path.join(data_dir, "supervoxels_1000", f"superpix-MIDDLE_{index}.nii.gz"))


def base_config(data_dir: str, runs_dir: str, **updates):
    config = {"data_dir": data_dir, "runs_dir": runs_dir, "image_size": [SIZE, SIZE],
              "test_classes": [1, 6], "device": "cpu", "num_workers": 0, "n_steps": 4,
              "snapshot_interval": 2, "print_interval": 1, "min_size": 100,
              # A milestone at step 2 (the release's rule: every lr_step_size steps before n_steps).
              "lr_step_size": 2, "lr_gamma": 0.5}
    config.update(updates)
    return config


def run_train(config):
    return train_script.ex.run(named_configs=["SYNTHETIC"], config_updates=config)


def run_test(config):
    return test_script.ex.run(named_configs=["SYNTHETIC"], config_updates=config)


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("phantom"))
    write_phantom(data_dir)
    return data_dir


@pytest.fixture(scope="module")
def straight_run(phantom, tmp_path_factory):
    """An uninterrupted 4-step training run (snapshots at steps 2 and 4)."""
    runs_dir = str(tmp_path_factory.mktemp("runs"))
    run = run_train(base_config(phantom, runs_dir))
    return run, runs_dir


def _model_state(snapshot: str):
    return torch.load(snapshot, weights_only=True)


# ----------------------------------------------------------------------------- training


def test_training_run_records_config_metrics_logs_and_snapshots(straight_run):
    run, _ = straight_run
    run_dir = run.observers[0].dir
    for name in ("config.json", "run.json", "metrics.json", "cout.txt", "train.log"):
        assert os.path.isfile(os.path.join(run_dir, name)), name
    assert json.load(open(os.path.join(run_dir, "run.json")))["status"] == "COMPLETED"
    assert [step for step, _ in list_snapshots(run_dir)] == [2, 4]
    assert run.result == snapshot_path(run_dir, 4)
    metrics = json.load(open(os.path.join(run_dir, "metrics.json")))
    for name in ("loss", "query_loss", "align_loss", "proto_loss", "grad_norm", "lr"):
        assert metrics[name]["steps"] == [1, 2, 3, 4], name
    assert metrics["lr"]["values"] == pytest.approx([1e-3, 5e-4, 5e-4, 5e-4])   # decayed at step 2
    assert all(math.isfinite(v) and v > 0 for v in metrics["query_loss"]["values"])
    log = open(os.path.join(run_dir, "train.log")).read()
    assert "step 4: loss" in log and "snapshot" in log
    snapshot = _model_state(snapshot_path(run_dir, 4))
    assert snapshot["step"] == 4 and snapshot["config"]["n_steps"] == 4
    assert {"model", "optimizer", "scheduler", "rng"} <= set(snapshot)


@pytest.fixture(scope="module")
def nan_run(phantom, tmp_path_factory):
    """Same options as `straight_run`, but the query loss is NaN at step 3."""
    runs_dir = str(tmp_path_factory.mktemp("runs_nan"))
    original, calls = train_script.query_loss, []

    def nan_on_third_step(probs, labels):
        calls.append(1)
        loss = original(probs, labels)
        return loss * float("nan") if len(calls) == 3 else loss

    train_script.query_loss = nan_on_third_step
    try:
        with pytest.raises(train_script.NonFiniteLossError) as error:
            run_train(base_config(phantom, runs_dir))
    finally:
        train_script.query_loss = original
    return str(error.value), os.path.join(runs_dir, "train", "1")


def test_nan_loss_stops_the_run_and_keeps_the_last_good_snapshot(nan_run):
    message, run_dir = nan_run
    assert "non-finite loss at step 3" in message
    assert snapshot_path(run_dir, 2) in message
    assert json.load(open(os.path.join(run_dir, "run.json")))["status"] == "FAILED"
    assert [step for step, _ in list_snapshots(run_dir)] == [2]
    state = _model_state(snapshot_path(run_dir, 2))["model"]
    assert all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point())


def test_resume_reaches_the_same_weights_as_a_straight_run(nan_run, straight_run, phantom, tmp_path):
    _, stopped_dir = nan_run
    straight, _ = straight_run
    # Resumed with data-loading workers: episodes depend only on (seed, step).
    resumed = run_train(base_config(phantom, str(tmp_path), resume=stopped_dir, num_workers=2))
    assert resumed.info["start_step"] == 2
    expected = _model_state(snapshot_path(straight.observers[0].dir, 4))
    got = _model_state(resumed.result)
    assert got["step"] == 4
    for name, tensor in expected["model"].items():
        assert torch.equal(got["model"][name], tensor), name
    for key, value in expected["optimizer"]["state"].items():
        assert torch.equal(got["optimizer"]["state"][key]["momentum_buffer"], value["momentum_buffer"])
    assert got["scheduler"]["last_epoch"] == expected["scheduler"]["last_epoch"] == 4


def test_resume_refuses_a_snapshot_of_other_options(straight_run, phantom, tmp_path):
    straight, _ = straight_run
    with pytest.raises(ValueError, match="seed: snapshot 2025 vs now 7"):
        run_train(base_config(phantom, str(tmp_path), resume=straight.observers[0].dir, seed=7, n_steps=6))
    with pytest.raises(ValueError, match="not before n_steps=4"):
        run_train(base_config(phantom, str(tmp_path), resume=straight.observers[0].dir))


# ----------------------------------------------------------------------------- configuration


@pytest.mark.parametrize("updates, message", [
    ({"dataset": "LUNG"}, "dataset='LUNG' is unknown; known datasets: SABS, CHAOST2"),
    ({"setting": 3}, "setting=3 must be 1 or 2"),
    ({"exclude_rule": "some"}, "exclude_rule='some'"),
    ({"device": "gpu"}, "device='gpu' must be one of"),
    ({"eval_fold": 5}, "eval_fold=5"),
    ({"grad_clip_norm": -1.0}, "grad_clip_norm=-1.0 must be None or a number > 0"),
    ({"optimizer": "rmsprop"}, "optimizer='rmsprop' must be 'sgd' \\(release\\) or 'adam'"),
    ({"eval_batch_size": 0}, "eval_batch_size=0 must be None \\(auto\\) or an integer >= 1"),
    ({"channels_last": "yes"}, "channels_last='yes' must be None \\(auto\\), True or False"),
])
def test_bad_options_fail_before_the_run_starts(updates, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        train_script.ex.run(config_updates={"runs_dir": str(tmp_path), **updates})
    assert not os.path.exists(os.path.join(tmp_path, "train", "1"))


def test_optimizer_option_builds_release_sgd_by_default_and_adam_on_request():
    model = torch.nn.Linear(2, 1)
    config = {"lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4, "optimizer": "sgd"}
    sgd = train_script.build_optimizer(model, config)
    assert type(sgd) is torch.optim.SGD
    assert sgd.defaults["momentum"] == 0.9 and sgd.defaults["weight_decay"] == 5e-4
    adam = train_script.build_optimizer(model, {**config, "optimizer": "adam"})
    assert type(adam) is torch.optim.Adam
    assert adam.defaults["lr"] == 0.01 and adam.defaults["weight_decay"] == 5e-4
    # Snapshots written before the option existed were trained with SGD.
    assert train_script.OPTIONS_ADDED_LATER == {"optimizer": "sgd"}


def test_eval_batch_size_is_one_on_cpu_and_eight_elsewhere_unless_set():
    auto, fixed = {"eval_batch_size": None}, {"eval_batch_size": 3}
    assert test_script.eval_batch_size(auto, torch.device("cpu")) == 1
    assert test_script.eval_batch_size(auto, torch.device("cuda")) == 8
    assert test_script.eval_batch_size(fixed, torch.device("cpu")) == 3


def test_evaluation_is_channels_last_on_cpu_only_unless_set():
    assert test_script.eval_channels_last({"channels_last": None}, torch.device("cpu")) is True
    assert test_script.eval_channels_last({"channels_last": None}, torch.device("cuda")) is False
    assert test_script.eval_channels_last({"channels_last": False}, torch.device("cpu")) is False
    assert test_script.eval_channels_last({"channels_last": True}, torch.device("cuda")) is True


def test_unknown_option_and_missing_data_are_clear_errors(tmp_path):
    from sacred.utils import ConfigAddedError
    with pytest.raises(ConfigAddedError, match="n_step"):
        train_script.ex.run(config_updates={"runs_dir": str(tmp_path), "n_step": 5})
    missing = str(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        run_test(base_config(missing, str(tmp_path), checkpoint="untrained"))


# ----------------------------------------------------------------------------- evaluation


@pytest.fixture(scope="module")
def evaluation(straight_run, phantom):
    straight, runs_dir = straight_run
    run = run_test(base_config(phantom, runs_dir, checkpoint=os.path.join(runs_dir, "train"),
                               eval_batch_size=2))
    return run, run.observers[0].dir


def test_evaluation_writes_every_output(evaluation, straight_run, phantom):
    run, run_dir = evaluation
    results = json.load(open(os.path.join(run_dir, "results.json")))
    assert results["checkpoint"] == snapshot_path(straight_run[0].observers[0].dir, 4)
    assert results["fold_volumes"] == [0, 1, 2] and results["support_volume"] == 0
    assert results["query_volumes"] == [1, 2]
    assert list(results["classes"]) == ["1", "6"]
    for class_id, name in (("1", "spleen"), ("6", "liver")):
        entry = results["classes"][class_id]
        assert entry["name"] == name and entry["support_slices"] == [2, 4, 5]   # int(f * 4) of slices 2..5
        assert [v["volume"] for v in entry["per_volume"]] == [1, 2]
        assert all(v["n_slices"] == len(ORGAN_SLICES) for v in entry["per_volume"])
        assert entry["dice_mean"] == pytest.approx(np.mean([v["dice"] for v in entry["per_volume"]]))
        assert os.path.isfile(os.path.join(run_dir, "figures", f"class_{class_id}_{name}.png"))
    assert results["mean_dice"] == pytest.approx(np.mean([c["dice_mean"] for c in results["classes"].values()]))
    assert run.result == pytest.approx(results["mean_dice"])
    assert results["timing"]["slices"] == 2 * 2 * len(ORGAN_SLICES)
    csv_lines = open(os.path.join(run_dir, "results.csv")).read().splitlines()
    assert csv_lines[0] == "query_volume,class_id,class_name,dice,iou,n_slices"
    assert len(csv_lines) == 1 + 4 + 2 + 1
    assert csv_lines[-1].startswith(f"mean,all,mean over classes,{results['mean_dice']:.6f}")
    assert os.path.isfile(os.path.join(run_dir, "test.log"))


def test_prediction_volumes_round_trip_to_the_reported_scores(evaluation, phantom):
    _, run_dir = evaluation
    results = json.load(open(os.path.join(run_dir, "results.json")))
    for class_id, name in ((1, "spleen"), (6, "liver")):
        for entry in results["classes"][str(class_id)]["per_volume"]:
            volume = entry["volume"]
            path = os.path.join(run_dir, "predictions", f"query_{volume}_class_{class_id}_{name}.nii.gz")
            prediction, geometry = read_volume(path, dtype=np.int64)
            label, label_geometry = read_volume(os.path.join(phantom, f"label_{volume}.nii.gz"), dtype=np.int64)
            assert geometry == label_geometry
            assert set(np.unique(prediction)) <= {0, class_id}
            outside = [z for z in range(DEPTH) if z not in ORGAN_SLICES]
            assert not prediction[outside].any()          # only evaluated slices are predicted
            assert dice_score(prediction, label == class_id) == pytest.approx(entry["dice"])
            assert iou_score(prediction, label == class_id) == pytest.approx(entry["iou"])


def test_release_checkpoint_loads_into_the_same_weights(straight_run, tmp_path):
    straight, _ = straight_run
    snapshot = snapshot_path(straight.observers[0].dir, 4)
    own = _model_state(snapshot)["model"]
    # The release's names for this project's modules, as the authors' code saves them.
    renames = [("encoder.reduce_features.", "encoder.reduce1."), ("encoder.reduce_layer4.", "encoder.reduce2."),
               ("encoder.threshold_head.", "encoder.down."), ("icm.query_proj.", "cross_att.fc_q."),
               ("icm.key_proj.", "cross_att.fc_k."), ("icm.value_proj.", "cross_att.fc_v."),
               ("icm.out_proj.", "cross_att.fc_o."), ("icm.aff.amplitude.conv_in.", "cross_att.amp_res1.0."),
               ("icm.aff.amplitude.conv_mid.", "cross_att.amp_res2.1."),
               ("icm.aff.amplitude.conv_heads.", "cross_att.amp_res3.1."),
               ("icm.aff.amplitude.spectrum_linear.", "cross_att.down1."),
               ("icm.aff.phase.conv_in.", "cross_att.pha_res1.0."), ("icm.aff.phase.conv_mid.", "cross_att.pha_res2.1."),
               ("icm.aff.phase.conv_heads.", "cross_att.pha_res3.1."),
               ("icm.aff.phase.spectrum_linear.", "cross_att.down2.")]

    def release_name(key):
        for ours, theirs in renames:
            if key.startswith(ours):
                return "module." + theirs + key[len(ours):]
        return "module." + key

    release = {release_name(k): v for k, v in own.items()}
    release["module.encoder.backbone.fc.weight"] = torch.zeros(1000, 2048)
    path = str(tmp_path / "release_fold0.pth")
    torch.save(release, path)
    model = test_script.build_model((SIZE, SIZE), torch.device("cpu"))
    assert test_script.load_weights(model, path, (SIZE, SIZE)) == path
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, own[name]), name

    torch.save({"conv.weight": torch.zeros(1)}, str(tmp_path / "foreign.pth"))
    with pytest.raises(ValueError, match="neither this project's snapshot nor a loadable release"):
        test_script.load_weights(model, str(tmp_path / "foreign.pth"), (SIZE, SIZE))
    with pytest.raises(ValueError, match="checkpoint is not set"):
        test_script.load_weights(model, None, (SIZE, SIZE))
    with pytest.raises(ValueError, match=r"evaluate it with image_size=\[65, 65\]"):
        test_script.load_weights(model, snapshot, (64, 64))


def test_bf16_and_channels_last_evaluation_runs(straight_run, phantom):
    straight, runs_dir = straight_run
    run = run_test(base_config(phantom, runs_dir, checkpoint=straight.result, amp_bf16=True,
                               channels_last=True, test_classes=[6], save_predictions=False,
                               save_figures=False))
    results = json.load(open(os.path.join(run.observers[0].dir, "results.json")))
    assert results["amp_bf16"] and results["channels_last"]
    assert results["timing"]["slices"] == 2 * len(ORGAN_SLICES)
    assert 0.0 <= results["mean_dice"] <= 1.0
    assert not os.path.exists(os.path.join(run.observers[0].dir, "predictions"))


# ----------------------------------------------------------------------------- scripts

FAKE_PYTHON = """#!/usr/bin/env bash
# Stands in for python: records each call; fold 2 fails; a test run leaves a run folder.
echo "$* CUDA=${CUDA_VISIBLE_DEVICES:-none}" >> "$FAKE_LOG"
for a in "$@"; do [[ "$a" == eval_fold=2 ]] && exit 3; done
for a in "$@"; do [[ "$a" == runs_dir=* ]] && mkdir -p "${a#runs_dir=}/test/7"; done
exit 0
"""


def _run_script(name, tmp_path, **env):
    import subprocess
    fake = tmp_path / "fake_python"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    log = tmp_path / "calls.log"
    environment = dict(os.environ, PYTHON=str(fake), FAKE_LOG=str(log), RUNS_ROOT=str(tmp_path / "runs"), **env)
    result = subprocess.run(["bash", os.path.join(ROOT, "script", name)], env=environment,
                            capture_output=True, text=True, timeout=60)
    calls = log.read_text().splitlines() if log.exists() else []
    return result, calls


def test_train_script_runs_folds_in_parallel_over_gpus_and_fails_loudly(tmp_path):
    result, calls = _run_script("train.sh", tmp_path, GPUS="0,1", STEPS="50")
    assert result.returncode == 1
    assert "FAILED folds: 2" in result.stderr
    by_fold = {c.split("eval_fold=")[1].split()[0]: c for c in calls}
    assert sorted(by_fold) == ["0", "1", "2", "3", "4"]          # the other folds still ran
    for fold, gpu in (("0", "0"), ("1", "1"), ("2", "0"), ("3", "1"), ("4", "0")):
        assert by_fold[fold].endswith(f"CUDA={gpu}") and "device=cuda" in by_fold[fold]
        assert by_fold[fold].startswith("train.py with SYNTHETIC setting=2") and "n_steps=50" in by_fold[fold]


def test_evaluate_script_runs_folds_in_turn_then_aggregates(tmp_path):
    result, calls = _run_script("evaluate.sh", tmp_path, FOLDS="0 1", CHECKPOINT="ckpt/f{fold}.pth",
                                DATASET="CMR", SUPP_IDX="2")
    assert result.returncode == 0, result.stderr
    assert [c.split()[0] for c in calls] == ["test.py", "test.py", "utils.py"]
    assert "checkpoint=ckpt/f1.pth" in calls[1] and "supp_idx=2" in calls[1] and " CMR " in calls[1]
    experiment = tmp_path / "runs" / "CMR_setting2"
    assert calls[2].startswith(f"utils.py aggregate {experiment}/fold0/test/7 {experiment}/fold1/test/7 "
                               f"--out {experiment}/results_table")
    result, calls = _run_script("evaluate.sh", tmp_path, FOLDS="1 2")
    assert result.returncode == 1 and "FAILED folds: 2" in result.stderr
    assert [c.split()[0] for c in calls[3:]] == ["test.py", "test.py"]   # no table from partial folds
