"""End to end: train.py and test.py as Sacred experiments on the phantom dataset
(tests/helpers.py; the run and its evaluation are session fixtures, tests/conftest.py), and
the fold scripts with a stand-in python."""
import json
import math
import os
import sys

import numpy as np
import pytest
import torch

import fafnet.cli.train as train_script
import fafnet.training.loop as training_loop
from fafnet.evaluation.metrics import dice_score, iou_score
from fafnet.evaluation.protocol import load_model
from fafnet.io.nifti import read_volume, write_volume
from fafnet.models import FAFNet, build_model, predict_batch_size
from fafnet.runtime.devices import eval_channels_last
from fafnet.runtime.options import flat_record, milestones
from fafnet.runtime.checkpoints import load_for_evaluation
from fafnet.runtime.snapshots import OPTIONS_ADDED_LATER, final_path, latest_path, list_step_snapshots, step_path
from tests.helpers import (DEPTH, ORGAN_SLICES, ROOT, SIZE, TRAINING, base_config, command_line, experiment_for,
                           model_state, options_of, run_script, run_test, run_train)


# ----------------------------------------------------------------------------- training


def test_training_run_records_config_metrics_logs_and_snapshots(straight_run):
    run, _ = straight_run
    run_dir = run.observers[0].dir
    for name in ("config.json", "run.json", "metrics.json", "cout.txt", "train.log"):
        assert os.path.isfile(os.path.join(run_dir, name)), name
    assert json.load(open(os.path.join(run_dir, "run.json")))["status"] == "COMPLETED"
    assert [step for step, _ in list_step_snapshots(run_dir)] == [2]     # weights of step 2 ...
    assert sorted(os.listdir(os.path.join(run_dir, "snapshots"))) == ["final.pth", "step_0000002.pth"]
    assert run.result == final_path(run_dir)                              # ... and everything at 4
    metrics = json.load(open(os.path.join(run_dir, "metrics.json")))
    for name in ("loss", "query_loss", "align_loss", "proto_loss", "grad_norm", "lr"):
        assert metrics[name]["steps"] == [1, 2, 3, 4], name
    assert metrics["lr"]["values"] == pytest.approx([1e-3, 5e-4, 5e-4, 5e-4])   # decayed at step 2
    assert all(math.isfinite(v) and v > 0 for v in metrics["query_loss"]["values"])
    log = open(os.path.join(run_dir, "train.log")).read()
    assert "step 4/4: loss" in log and "snapshot" in log and "left" in log
    assert "loading training volumes: 7 volumes done in" in log
    snapshot = model_state(final_path(run_dir))
    assert snapshot["step"] == 4 and snapshot["config"]["n_steps"] == 4
    assert {"model", "optimizer", "scheduler", "rng"} <= set(snapshot)
    older = model_state(step_path(run_dir, 2))
    assert older["step"] == 2 and older["kind"] == "weights" and "optimizer" not in older


def test_training_records_its_fold_volumes_and_files(straight_run, phantom):
    import hashlib
    run, _ = straight_run
    run_dir = run.observers[0].dir
    manifest = json.load(open(os.path.join(run_dir, "data_manifest.json")))
    assert manifest["dataset"] == "SYNTHETIC" and manifest["eval_fold"] == 0
    assert manifest["volume_indices"] == list(range(3, 10))                 # fold 0 holds 0, 1, 2
    assert manifest["image_files"] == [f"image_{i}.nii.gz" for i in range(3, 10)]
    # Setting 2 reads labels, self-supervision the supervoxels: 3 files per training volume.
    names = [f["name"] for f in manifest["files"]]
    assert names == [name for i in range(3, 10) for name in (
        f"image_{i}.nii.gz", f"label_{i}.nii.gz", f"supervoxels_1000/superpix-MIDDLE_{i}.nii.gz")]
    for entry in manifest["files"]:
        data = open(os.path.join(phantom, entry["name"]), "rb").read()
        assert entry["sha256"] == hashlib.sha256(data).hexdigest() and entry["size"] == len(data)
    for snapshot in (final_path(run_dir), step_path(run_dir, 2)):
        assert model_state(snapshot)["training_data"] == manifest


def test_a_dataset_source_files_are_the_files_it_reads(phantom):
    dataset = training_loop.make_train_dataset({
        **options_of("train", "SYNTHETIC", **TRAINING, **base_config(phantom, "unused")),
        "use_gt": True, "setting": 1, "test_classes": [1], "min_size": 50})
    assert dataset.source_files() == [os.path.join(phantom, f"{kind}_{i}.nii.gz")
                                      for i in range(3, 10) for kind in ("image", "label")]


@pytest.fixture(scope="module")
def nan_run(phantom, tmp_path_factory):
    """Same options as `straight_run`, but the query loss is NaN at step 3."""
    runs_dir = str(tmp_path_factory.mktemp("runs_nan"))
    original, calls = FAFNet.forward, []

    def nan_on_third_step(self, *args, **kwargs):
        probs, losses = original(self, *args, **kwargs)
        if losses:   # a training forward pass
            calls.append(1)
            if len(calls) == 3:
                losses = {**losses, "query_loss": losses["query_loss"] * float("nan")}
        return probs, losses

    FAFNet.forward = nan_on_third_step
    try:
        with pytest.raises(training_loop.NonFiniteLossError) as error:
            run_train(base_config(phantom, runs_dir))
    finally:
        FAFNet.forward = original
    return str(error.value), os.path.join(runs_dir, "train", "1")


def test_nan_loss_stops_the_run_and_keeps_the_last_good_snapshot(nan_run):
    message, run_dir = nan_run
    assert "non-finite loss at step 3" in message
    assert latest_path(run_dir) in message
    assert json.load(open(os.path.join(run_dir, "run.json")))["status"] == "FAILED"
    assert sorted(os.listdir(os.path.join(run_dir, "snapshots"))) == ["latest.pth", "step_0000002.pth"]
    assert model_state(latest_path(run_dir))["step"] == 2
    state = model_state(latest_path(run_dir))["model"]
    assert all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point())


def test_resume_reaches_the_same_weights_as_a_straight_run(nan_run, straight_run, phantom, tmp_path):
    _, stopped_dir = nan_run
    straight, _ = straight_run
    # Resumed with data-loading workers: episodes depend only on (seed, step).
    resumed = run_train(base_config(phantom, str(tmp_path), resume=stopped_dir, num_workers=2))
    assert resumed.info["start_step"] == 2
    expected = model_state(final_path(straight.observers[0].dir))
    got = model_state(resumed.result)
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
    ({"dataset": "LUNG"}, "dataset='LUNG' is not a known dataset; known: SABS, CHAOST2"),
    ({"setting": 3}, "setting=3 must be 1 or 2"),
    ({"setting2_protocol": "some"}, "setting2_protocol='some' must be one of release, any, groups"),
    ({"setting": 2, "setting2_protocol": "groups"}, r"group=None: group must be one of \[0, 1\] for SABS, got None"),
    ({"dataset": "CMR", "setting": 2, "setting2_protocol": "groups", "group": 0},
     "group=0: the 'groups' protocol of setting 2 defines no class groups for CMR"),
    ({"supp_idx": [0, -1]}, "supp_idx=\\[0, -1\\] must be a fold position"),
    ({"keep_snapshots": "all"}, "keep_snapshots='all' must be one of weights, none"),
    ({"device": "gpu"}, "device='gpu' must be one of"),
    ({"eval_fold": 5}, "eval_fold=5 must be 0, 1, 2, 3 or 4"),
    ({"grad_clip_norm": -1.0}, "grad_clip_norm=-1.0 must be None or a finite number > 0"),
    ({"optimizer": "rmsprop"}, "^config option optimizer='rmsprop' must be 'sgd' \\(the release\\) or 'adam' "
                               "\\(not in the release\\)"),
    ({"n_steps": 0}, "n_steps=0 must be an integer from 1 to"),
    ({"channels_last": "yes"}, "channels_last='yes' must be None, True or False"),
    # Values Sacred's config scopes used to choke on before any check ran (derived options).
    ({"n_steps": "abc"}, "n_steps='abc' must be an integer from 1 to"),
    ({"n_steps": 2.5}, "n_steps=2.5 must be an integer from 1 to"),
    ({"lr_step_size": 0}, "lr_step_size=0 must be an integer from 1 to"),
    ({"data_root": 5}, "data_root=5 must be a path"),
    ({"seed": "abc"}, "seed='abc' must be an integer from 0 to 4294967295"),
    ({"seed": -1}, "seed=-1 must be an integer from 0 to 4294967295"),
    # Non-finite numbers pass `v >= 0`.
    ({"lr": float("inf")}, "lr=inf must be a finite number >= 0"),
    ({"momentum": float("nan")}, "momentum=nan must be a finite number >= 0"),
    ({"weight_decay": float("inf")}, "weight_decay=inf must be a finite number >= 0"),
    ({"lr_gamma": float("inf")}, "lr_gamma=inf must be a finite number >= 0"),
    ({"grad_clip_norm": float("inf")}, "grad_clip_norm=inf must be None or a finite number > 0"),
    ({"model_options": {"threshold_head_init_scale": float("nan")}, "pretrained_weights": "none"},
     "model_options.threshold_head_init_scale=nan must be a finite number"),
])
def test_bad_options_fail_before_the_run_starts(updates, message, tmp_path):
    command = "evaluate" if "supp_idx" in updates else "train"
    with pytest.raises(ValueError, match=message):
        experiment_for(command).run(config_updates={"runs_dir": str(tmp_path), **updates})
    assert not os.listdir(tmp_path)


def test_optimizer_option_builds_release_sgd_by_default_and_adam_on_request():
    model = torch.nn.Linear(2, 1)
    config = {"lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4, "optimizer": "sgd"}
    sgd = training_loop.build_optimizer(model, config)
    assert type(sgd) is torch.optim.SGD
    assert sgd.defaults["momentum"] == 0.9 and sgd.defaults["weight_decay"] == 5e-4
    adam = training_loop.build_optimizer(model, {**config, "optimizer": "adam"})
    assert type(adam) is torch.optim.Adam
    assert adam.defaults["lr"] == 0.01 and adam.defaults["weight_decay"] == 5e-4
    # Snapshots written before the option existed were trained with SGD.
    assert OPTIONS_ADDED_LATER["optimizer"] == "sgd"


class _UsesFAFNetsBatchSize(torch.nn.Module):
    default_batch_size = FAFNet.default_batch_size


@pytest.mark.parametrize("device, batch, channels_last", [("cpu", 1, True), ("cuda", 8, False), ("mps", 8, False)])
def test_evaluation_defaults_follow_the_device(device, batch, channels_last):
    # The options stay None (the model's and the device's choice), resolved when evaluating.
    config = options_of("evaluate", "SYNTHETIC", device=device)
    assert config["eval_batch_size"] is None and config["channels_last"] is None
    assert predict_batch_size(_UsesFAFNetsBatchSize(), torch.device(device)) == batch
    assert eval_channels_last(config["channels_last"], torch.device(device)) is channels_last
    given = options_of("evaluate", device=device, eval_batch_size=3, channels_last=False)
    assert predict_batch_size(_UsesFAFNetsBatchSize(), torch.device(device), given["eval_batch_size"]) == 3
    assert eval_channels_last(given["channels_last"], torch.device(device)) is False


def test_unknown_option_and_missing_data_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match=r"config option n_step: no such option \(did you mean n_steps"):
        experiment_for("train").run(named_configs=["SYNTHETIC"],
                                    config_updates={"runs_dir": str(tmp_path), "n_step": 5})
    missing = str(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        run_test(base_config(missing, str(tmp_path), checkpoint="untrained"))


# ----------------------------------------------------------------------------- evaluation


def test_evaluation_writes_every_output(evaluation, straight_run, phantom):
    run, run_dir = evaluation
    results = json.load(open(os.path.join(run_dir, "results.json")))
    protocol = results["protocol"]
    assert protocol["checkpoint"] == final_path(straight_run[0].observers[0].dir)
    assert protocol["checkpoint_step"] == 4 and protocol["training"]["n_steps"] == 4
    assert protocol["supp_idx"] == [0] and protocol["setting"] == 2 and protocol["setting2_protocol"] == "any"
    # The training record names the fold and volumes the checkpoint trained on: none is tested here.
    assert protocol["training"]["eval_fold"] == 0 and protocol["training"]["volume_indices"] == list(range(3, 10))
    assert protocol["training"]["image_files"] == [f"image_{i}.nii.gz" for i in range(3, 10)]
    assert protocol["leakage"]["status"] == "clean" and protocol["leakage"]["overlap"] == []
    assert results["mean_classes"] == ["1", "6"]
    assert results["fold_volumes"] == [0, 1, 2]
    support = results["supports"]["0"]
    assert support["support_volume"] == 0 and support["query_volumes"] == [1, 2]
    assert list(results["classes"]) == ["1", "6"]
    for class_id, name in (("1", "spleen"), ("6", "liver")):
        entry = support["classes"][class_id]
        assert entry["name"] == name and entry["support_slices"] == [2, 4, 5]   # int(f * 4) of slices 2..5
        assert [v["volume"] for v in entry["per_volume"]] == [1, 2]
        assert all(v["n_slices"] == len(ORGAN_SLICES) for v in entry["per_volume"])
        assert entry["dice_mean"] == pytest.approx(np.mean([v["dice"] for v in entry["per_volume"]]))
        assert results["classes"][class_id]["dice_mean"] == entry["dice_mean"]
        assert os.path.isfile(os.path.join(run_dir, "figures", f"class_{class_id}_{name}.png"))
    assert results["mean_dice"] == pytest.approx(np.mean([c["dice_mean"] for c in results["classes"].values()]))
    assert run.result == pytest.approx(results["mean_dice"])
    assert results["timing"]["slices"] == 2 * 2 * len(ORGAN_SLICES)
    csv_lines = open(os.path.join(run_dir, "results.csv")).read().splitlines()
    assert csv_lines[0] == "supp_idx,query_volume,query_image,class_id,class_name,dice,iou,n_slices"
    assert csv_lines[1].startswith("0,1,image_1.nii.gz,1,spleen,")
    assert len(csv_lines) == 1 + 4 + 2 + 1
    assert csv_lines[-1].startswith(f"all,mean,,all,mean over classes,{results['mean_dice']:.6f}")
    # Every volume is named by its file as well as its position.
    assert results["fold_images"] == ["image_0.nii.gz", "image_1.nii.gz", "image_2.nii.gz"]
    assert support["support_image"] == "image_0.nii.gz"
    assert support["query_images"] == ["image_1.nii.gz", "image_2.nii.gz"]
    assert [v["image"] for v in support["classes"]["1"]["per_volume"]] == ["image_1.nii.gz", "image_2.nii.gz"]
    assert support["classes"]["1"]["support_image"] == "image_0.nii.gz"
    # Without a terminal, data loading and evaluation report their progress in the run's log.
    log = open(os.path.join(run_dir, "test.log")).read()
    assert "loading test volumes: 3 volumes done in" in log
    assert f"evaluating support index 0: {2 * 2 * len(ORGAN_SLICES)} slices done in" in log


def test_prediction_volumes_round_trip_to_the_reported_scores(evaluation, phantom):
    _, run_dir = evaluation
    results = json.load(open(os.path.join(run_dir, "results.json")))
    for class_id, name in ((1, "spleen"), (6, "liver")):
        for entry in results["supports"]["0"]["classes"][str(class_id)]["per_volume"]:
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


def test_combined_prediction_volume_holds_every_class(evaluation, phantom):
    _, run_dir = evaluation
    for volume in (1, 2):
        combined, geometry = read_volume(os.path.join(run_dir, "predictions", f"query_{volume}_all_classes.nii.gz"),
                                         dtype=np.int64)
        _, label_geometry = read_volume(os.path.join(phantom, f"label_{volume}.nii.gz"))
        assert geometry == label_geometry
        for class_id, name in ((1, "spleen"), (6, "liver")):
            single, _ = read_volume(os.path.join(run_dir, "predictions",
                                                 f"query_{volume}_class_{class_id}_{name}.nii.gz"), dtype=np.int64)
            # Liver (later in test_classes) wins where both were predicted.
            expected = (single == class_id) if class_id == 6 else (single == class_id) & (combined != 6)
            assert np.array_equal(combined == class_id, expected)


def test_figure_rows_are_all_queries_or_best_median_worst():
    from fafnet.evaluation.figures import choose_queries
    assert choose_queries([0.2, 0.9, 0.5]) == ([1, 2, 0], "all 3 query volume(s)")
    rows, how = choose_queries([0.2, 0.9, 0.5, 0.7, 0.1])
    assert rows == [1, 2, 4] and how.startswith("the best, median and worst of 5")


def test_release_checkpoint_loads_into_the_same_weights(straight_run, tmp_path):
    straight, _ = straight_run
    snapshot = final_path(straight.observers[0].dir)
    own = model_state(snapshot)["model"]
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
    model = build_model("fafnet", (SIZE, SIZE))
    assert load_for_evaluation(model, path, (SIZE, SIZE)) == (path, None, None, None)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, own[name]), name

    torch.save({"conv.weight": torch.zeros(1)}, str(tmp_path / "foreign.pth"))
    with pytest.raises(ValueError, match="neither this project's snapshot nor a loadable release"):
        load_for_evaluation(model, str(tmp_path / "foreign.pth"), (SIZE, SIZE))
    with pytest.raises(ValueError, match="checkpoint is not set"):
        load_model({"checkpoint": None}, torch.device("cpu"))
    with pytest.raises(ValueError, match=rf"evaluate it with image_size=\[{SIZE}, {SIZE}\]"):
        load_for_evaluation(model, snapshot, (64, 64))


def test_bf16_and_channels_last_evaluation_runs(straight_run, phantom):
    straight, runs_dir = straight_run
    run = run_test(base_config(phantom, runs_dir, checkpoint=straight.result, amp_bf16=True,
                               channels_last=True, test_classes=[6], save_predictions=False,
                               save_figures=False))
    results = json.load(open(os.path.join(run.observers[0].dir, "results.json")))
    assert results["evaluation"]["amp_bf16"] and results["evaluation"]["channels_last"]
    assert results["timing"]["slices"] == 2 * len(ORGAN_SLICES)
    assert 0.0 <= results["mean_dice"] <= 1.0
    assert not os.path.exists(os.path.join(run.observers[0].dir, "predictions"))


# ----------------------------------------------------------------------------- scripts

FAKE_PYTHON = """#!/usr/bin/env bash
# Stands in for python: records each call; fold 2 fails; a test run leaves a run folder.
echo "$* CUDA=${CUDA_VISIBLE_DEVICES:-none}" >> "$CALLS"
for a in "$@"; do [[ "$a" == eval_fold=2 ]] && exit 3; done
for a in "$@"; do [[ "$a" == runs_dir=* ]] && mkdir -p "${a#runs_dir=}/test/7"; done
exit 0
"""


def _run_script(name, tmp_path, **env):
    return run_script(name, tmp_path, FAKE_PYTHON, **env)


def test_train_script_runs_folds_in_parallel_over_gpus_and_fails_loudly(tmp_path):
    result, calls = _run_script("train.sh", tmp_path, GPUS="0,1", STEPS="50")
    assert result.returncode == 1
    assert "FAILED folds: 2" in result.stderr
    by_fold = {c.split("eval_fold=")[1].split()[0]: c for c in calls}
    assert sorted(by_fold) == ["0", "1", "2", "3", "4"]          # the other folds still ran
    for fold, gpu in (("0", "0"), ("1", "1"), ("2", "0"), ("3", "1"), ("4", "0")):
        assert by_fold[fold].endswith(f"CUDA={gpu}") and "device=cuda" in by_fold[fold]
        # The authors' script's defaults (config.py's dataset and folds): SABS, setting 1.
        assert by_fold[fold].startswith("train.py with dataset=SABS setting=1 ") and "n_steps=50" in by_fold[fold]
    assert os.path.isfile(tmp_path / "runs" / "SABS_setting1" / "fold0" / "train.out")


def test_train_script_groups_protocol_trains_both_groups_of_each_fold(tmp_path):
    result, calls = _run_script("train.sh", tmp_path, FOLDS="0 1", SETTING="2", PROTOCOL="groups",
                                DATASET="CHAOST2")
    assert result.returncode == 0, result.stderr
    assert len(calls) == 4
    for call, (fold, group) in zip(calls, ((0, 0), (0, 1), (1, 0), (1, 1))):
        assert call.startswith("train.py with dataset=CHAOST2 setting=2 setting2_protocol=groups")
        assert f"eval_fold={fold} " in call and f"group={group}" in call
        assert f"CHAOST2_setting2_groups/fold{fold}/group{group}" in call


def test_a_second_script_on_the_same_fold_is_refused_and_stale_locks_taken_over(tmp_path):
    experiment = tmp_path / "runs" / "SABS_setting1"
    (experiment / "fold0" / ".train.lock").mkdir(parents=True)
    (experiment / "fold0" / ".train.lock" / "pid").write_text(str(os.getpid()))   # alive: this test
    (experiment / "fold1" / ".train.lock").mkdir(parents=True)
    (experiment / "fold1" / ".train.lock" / "pid").write_text(str(2 ** 22 + 9))   # no such process
    result, calls = _run_script("train.sh", tmp_path, FOLDS="0 1")
    assert result.returncode == 1 and "FAILED folds: 0" in result.stderr
    assert "is in use by process" in result.stderr and "taking over the stale lock" in result.stderr
    assert [c.split("eval_fold=")[1].split()[0] for c in calls] == ["1"]
    assert not (experiment / "fold1" / ".train.lock").exists()                     # released after
    assert (experiment / "fold0" / ".train.lock").exists()                         # not ours to remove


def test_evaluate_script_runs_folds_in_turn_then_aggregates(tmp_path):
    result, calls = _run_script("evaluate.sh", tmp_path, FOLDS="0 1", CHECKPOINT="ckpt/f{fold}.pth",
                                DATASET="CMR", SUPP_IDX="0 1 2")
    assert result.returncode == 0, result.stderr
    assert [c.split()[0] for c in calls] == ["test.py", "test.py", "utils.py"]
    assert "checkpoint=ckpt/f1.pth" in calls[1] and "supp_idx=[0,1,2]" in calls[1] and " dataset=CMR " in calls[1]
    experiment = tmp_path / "runs" / "CMR_setting1"
    assert calls[2].startswith(f"utils.py aggregate {experiment}/fold0/test/7 {experiment}/fold1/test/7 "
                               f"--out {experiment}/results_table")
    result, calls = _run_script("evaluate.sh", tmp_path, FOLDS="1 2", DATASET="CMR", SUPP_IDX="2")
    assert result.returncode == 1 and "FAILED folds: 2" in result.stderr
    assert "supp_idx=2 " in calls[3]
    assert [c.split()[0] for c in calls[3:]] == ["test.py", "test.py"]   # no table from partial folds


def test_evaluate_script_groups_protocol_joins_the_groups(tmp_path):
    result, calls = _run_script("evaluate.sh", tmp_path, FOLDS="0", SETTING="2", PROTOCOL="groups")
    assert result.returncode == 0, result.stderr
    experiment = tmp_path / "runs" / "SABS_setting2_groups"
    assert "group=0" in calls[0] and f"checkpoint={experiment}/fold0/group0/train" in calls[0]
    assert calls[2].startswith(f"utils.py aggregate {experiment}/fold0/group0/test/7 "
                               f"{experiment}/fold0/group1/test/7 --out {experiment}/results_table")


# ----------------------------------------------------------------------------- provenance


# What run.json must list: the command's own module as the main file, and as sources the
# modules that define and check the options (config.py, the file a researcher edits, among
# them) and the engine's modules. A run in this process has imported everything; the real
# command's list is checked on a train.py process (test_sigterm_interrupts_...).
TRAINING_SOURCES = ("config.py", "fafnet/cli/train.py", "fafnet/cli/experiment.py", "fafnet/runtime/options.py",
                    "fafnet/training/loop.py", "fafnet/models/fafnet.py", "fafnet/models/modules.py",
                    "fafnet/models/encoder.py", "fafnet/episodes/training.py", "fafnet/runtime/snapshots.py",
                    "fafnet/io/nifti.py")


def assert_run_json_names_its_sources(run_dir, mainfile, expected_sources):
    experiment = json.load(open(os.path.join(run_dir, "run.json")))["experiment"]
    sources = {path for path, _ in experiment["sources"]}
    missing = [path for path in expected_sources if path not in sources]
    assert (experiment["mainfile"], missing) == (mainfile, []), \
        f"run.json's mainfile is {experiment['mainfile']}; its sources lack {missing}"
    return experiment


def test_training_run_records_sources_dependencies_and_commit(straight_run):
    run, _ = straight_run
    run_dir = run.observers[0].dir
    experiment = assert_run_json_names_its_sources(run_dir, "fafnet/cli/train.py", TRAINING_SOURCES)
    packages = {dependency.split("==")[0].lower() for dependency in experiment["dependencies"]}
    assert {"torch", "torchvision", "numpy", "simpleitk", "sacred", "scipy", "tqdm"} <= packages
    assert all("==" in d and not d.endswith("<unknown>") for d in experiment["dependencies"])
    repository = experiment["repositories"][0]
    assert len(repository["commit"]) == 40 and isinstance(repository["dirty"], bool)
    assert json.load(open(os.path.join(run_dir, "info.json")))["pid"] == os.getpid()


def test_source_and_package_discovery_finds_what_sacreds_sys_discovery_finds(straight_run, tmp_path):
    # The project gathers run.json's sources and packages itself (Sacred's own "sys" discovery
    # resolves every module's path again for each experiment). Same sets, on this process's
    # modules (the engines, torch, pytest), and on a link to a project file from outside it.
    import sys
    import types

    from sacred.dependencies import get_dependencies_from_sys_modules, get_sources_from_sys_modules

    from fafnet.io.provenance import PROJECT_ROOT, imported_sources_and_packages
    outside = tmp_path / "linked_module.py"
    outside.symlink_to(os.path.join(PROJECT_ROOT, "fafnet", "io", "provenance.py"))
    linked = types.ModuleType("linked_module")
    linked.__file__ = str(outside)
    sys.modules["linked_module"] = linked
    try:
        sources, packages = imported_sources_and_packages(PROJECT_ROOT)
        expected_sources = get_sources_from_sys_modules({}, PROJECT_ROOT, False)
        expected_packages = get_dependencies_from_sys_modules({}, PROJECT_ROOT)
    finally:
        del sys.modules["linked_module"]
    assert sorted(s.to_json(PROJECT_ROOT) for s in sources) == sorted(s.to_json(PROJECT_ROOT) for s in expected_sources)
    assert sorted(p.to_json() for p in packages) == sorted(p.to_json() for p in expected_packages)
    assert os.path.join(PROJECT_ROOT, "fafnet", "cli", "train.py") in {s.filename for s in sources}
    assert str(outside) not in {s.filename for s in sources}   # a module name that is not its path
    assert {"sacred", "pytest"} <= {p.name for p in packages}


def test_config_json_holds_every_option_flat_and_resolved(straight_run, evaluation):
    run, _ = straight_run
    training = json.load(open(os.path.join(run.observers[0].dir, "config.json")))
    options = {k: v for k, v in training.items() if not k.startswith("__")}
    # One flat config (config.py's options, the same for train.py and test.py); the only dict
    # is the model's options, recorded in full.
    assert set(options) == {k for k in options_of("train") if not k.startswith("__")}
    assert [k for k, v in options.items() if isinstance(v, dict)] == ["model_options"]
    assert options["model_options"] == {"icm": True, "aff": True, "threshold": "adaptive",
                                        "zero_init_residual": False, "threshold_head_init_scale": 1.0}
    assert options["lr_milestones"] is None and milestones(options) == [2] and options["image_size"] == [SIZE, SIZE]
    assert options["test_classes"] == [1, 6] and options["supervoxel_min_size"] == 1000
    assert options["num_workers"] == 0 and options["data_dir"] and options["seed"] == 2025
    assert options["dataset"] == "SYNTHETIC" and options["model"] == "fafnet"
    # flat_record reads it as it is; the snapshot keeps the same options.
    assert flat_record(training) == options
    assert flat_record(model_state(final_path(run.observers[0].dir))["config"]) == options
    _, evaluation_dir = evaluation
    evaluated = json.load(open(os.path.join(evaluation_dir, "config.json")))
    assert set(flat_record(evaluated)) == set(options)
    # The evaluation's options as given (None: the model's and the device's choice) ...
    assert evaluated["eval_batch_size"] == 2 and evaluated["channels_last"] is None
    # ... and as used, in results.json.
    used = json.load(open(os.path.join(evaluation_dir, "results.json")))["evaluation"]
    assert used["eval_batch_size"] == 2 and used["channels_last"] is True
    derived = options_of("train", "CHAOST2", data_root="/data")
    assert derived["data_dir"] == os.path.join("/data", "chaos_MR_T2_normalized")
    assert derived["image_size"] == [256, 256] and derived["test_classes"] == [1, 2, 3, 4]
    assert milestones(derived) == list(range(3000, 42000, 3000))


@pytest.fixture(scope="module")
def snapshot_of_0_5(straight_run, tmp_path_factory):
    """The straight run's final snapshot as 0.5 wrote it: a flat config with FAF-Net's
    initialisation options at the top (here zero_init_residual=True, as the demo trained), the
    computed lr_milestones, none of 0.6's options, no model_options entry."""
    straight, _ = straight_run
    state = model_state(final_path(straight.observers[0].dir))
    config = {k: v for k, v in state["config"].items()
              if k not in ("model_options", "folds", "num_threads", "pseudo_labels", "superpixel_min_size", "__doc__")}
    config.update(zero_init_residual=True, threshold_head_init_scale=1.0, lr_milestones=[2])
    state["config"] = config
    del state["model_options"]
    path = str(tmp_path_factory.mktemp("older") / "final_0_5.pth")
    torch.save(state, path)
    return path


def test_a_snapshot_of_0_5_is_evaluated_with_its_model_options(snapshot_of_0_5, phantom, tmp_path):
    run = run_test(base_config(phantom, str(tmp_path), checkpoint=snapshot_of_0_5, test_classes=[6],
                               save_predictions=False, save_figures=False))
    protocol = json.load(open(os.path.join(run.observers[0].dir, "results.json")))["protocol"]
    assert protocol["model"] == "fafnet" and protocol["model_options"]["zero_init_residual"] is True
    assert protocol["checkpoint_step"] == 4
    # Its options are the checkpoint's: another value is refused.
    with pytest.raises(ValueError, match="was trained with zero_init_residual=True"):
        run_test(base_config(phantom, str(tmp_path), checkpoint=snapshot_of_0_5, test_classes=[6],
                             model_options={"zero_init_residual": False}))


def test_a_snapshot_of_0_5_resumes_with_its_model_options(snapshot_of_0_5, phantom, tmp_path):
    with pytest.raises(ValueError, match="model_options: snapshot .*'zero_init_residual': True.* vs now "):
        run_train(base_config(phantom, str(tmp_path / "refused"), resume=snapshot_of_0_5, n_steps=5))
    resumed = run_train(base_config(phantom, str(tmp_path / "runs"), resume=snapshot_of_0_5, n_steps=5,
                                    model_options={"zero_init_residual": True}))
    assert resumed.info["start_step"] == 4 and model_state(resumed.result)["step"] == 5
    assert model_state(resumed.result)["model_options"]["zero_init_residual"] is True


def test_training_writes_tensorboard_events_and_progress_png(straight_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run, _ = straight_run
    run_dir = run.observers[0].dir
    events = EventAccumulator(os.path.join(run_dir, "tensorboard"))
    events.Reload()
    metrics = json.load(open(os.path.join(run_dir, "metrics.json")))
    assert set(events.Tags()["scalars"]) == set(metrics)
    for name in metrics:
        logged = [(e.step, e.value) for e in events.Scalars(name)]
        assert [step for step, _ in logged] == metrics[name]["steps"], name
        assert [v for _, v in logged] == pytest.approx(metrics[name]["values"], rel=1e-6), name
    png = open(os.path.join(run_dir, "progress.png"), "rb").read()
    assert png.startswith(b"\x89PNG")


def test_captured_output_holds_no_progress_bars_and_metric_names_are_slugs(straight_run, evaluation):
    run, _ = straight_run
    cout = open(os.path.join(run.observers[0].dir, "cout.txt")).read()
    assert "step/s" not in cout and "it/s" not in cout and "\r" not in cout
    _, evaluation_dir = evaluation
    names = json.load(open(os.path.join(evaluation_dir, "metrics.json")))
    assert set(names) == {"dice_spleen", "dice_liver", "mean_dice"}


# ----------------------------------------------------------------------------- release defaults


def test_defaults_reproduce_the_authors_scripts():
    training = options_of("train", "SABS", pretrained_weights=None)
    expected = {"dataset": "SABS", "setting": 1, "setting2_protocol": "release", "test_classes": [1, 2, 3, 6],
                "n_steps": 42000, "lr_step_size": 3000, "lr_gamma": 0.98, "snapshot_interval": 6000,
                "seed": 2025, "optimizer": "sgd", "lr": 1e-3, "momentum": 0.9, "weight_decay": 5e-4,
                "n_shot": 1, "min_size": 200, "max_iters_per_load": 3000, "supervoxel_min_size": 5000,
                "image_size": [257, 257], "use_gt": False, "grad_clip_norm": None}
    assert {k: training[k] for k in expected} == expected
    assert milestones(training) == [3000 * k for k in range(1, 14)]        # 3000 ... 39000
    evaluation = options_of("evaluate", "SABS")
    assert evaluation["supp_idx"] == 2 and evaluation["n_part"] == 3 and evaluation["setting"] == 1
    groups = options_of("evaluate", "CHAOST2", setting=2, setting2_protocol="groups", group=1)
    assert groups["test_classes"] == [1, 4]


def test_release_schedule_from_the_default_config_against_hand_values():
    config = options_of("train", "SABS", pretrained_weights=None)
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=config["lr"])
    scheduler = training_loop.build_scheduler(optimizer, milestones(config), config["lr_gamma"])
    lrs = {}
    for step in range(1, 42000):
        optimizer.step()
        scheduler.step()
        if step in (2999, 3000, 6000, 41999):
            lrs[step] = optimizer.param_groups[0]["lr"]
    assert lrs[2999] == pytest.approx(1e-3, rel=1e-12)
    assert lrs[3000] == pytest.approx(9.8e-4, rel=1e-12)
    assert lrs[6000] == pytest.approx(9.604e-4, rel=1e-12)
    assert lrs[41999] == pytest.approx(1e-3 * 0.98 ** 13, rel=1e-12)


def test_real_datasets_need_pretrained_weights_unless_declined(tmp_path):
    runs = str(tmp_path / "runs")
    with pytest.raises(ValueError, match="config option pretrained_weights is not set.*resnet101-63fe2227.*"
                                         "deeplabv3_resnet101_coco.*pretrained_weights=none"):
        experiment_for("train").run(named_configs=["CMR"], config_updates={"runs_dir": runs, "pretrained_weights": None})
    assert not os.path.exists(runs)                  # refused before a run folder exists
    # Declined explicitly: training starts (and here stops at the missing data).
    with pytest.raises(FileNotFoundError, match="data folder not found"):
        train_script.experiment().run(named_configs=["CMR"], config_updates={
            "runs_dir": runs, "pretrained_weights": "none", "data_dir": str(tmp_path / "none")})
    # The phantom trains from a random start without saying so.
    assert options_of("train", "SYNTHETIC", pretrained_weights=None)["pretrained_weights"] is None


def test_skipped_work_is_recorded_warned_and_marked(straight_run, phantom, caplog):
    _, runs_dir = straight_run
    # 4 evaluated slices in 5 chunks leave one chunk empty in every query volume.
    run = run_test(base_config(phantom, runs_dir, checkpoint="untrained", n_part=5, test_classes=[6],
                               save_predictions=False, save_figures=False))
    results = json.load(open(os.path.join(run.observers[0].dir, "results.json")))
    skipped = results["skipped"]
    assert [(s["class_id"], s["what"]) for s in skipped] == [(6, "query volume 1 (image_1.nii.gz)"),
                                                              (6, "query volume 2 (image_2.nii.gz)")]
    assert all("chunk(s) [0] empty: 4 slice(s) for n_part=5" in s["reason"] for s in skipped)
    assert "skipped class 6 (liver)" in caplog.text
    assert "| liver * |" in open(os.path.join(run.observers[0].dir, "cout.txt")).read()
    # Not given, the batch size and layout are the model's and the CPU's: 1 slice, channels-last.
    assert results["evaluation"]["eval_batch_size"] == 1 and results["evaluation"]["channels_last"] is True


@pytest.mark.parametrize("words, last_line", [
    (["dataset=LUNG"], "train.py: error: config option dataset='LUNG' is not a known dataset"),
    (["SYNTHETIC", "n_steps=abc"], "train.py: error: config option n_steps='abc' must be an integer from 1 to 1000000000"),
])
def test_command_line_errors_are_one_line(words, last_line, tmp_path, capsys):
    status, _, err = command_line(train_script, "with", *words, f"runs_dir={tmp_path}", capsys=capsys, fresh=False)
    assert status == 2 and "Traceback" not in err
    assert err.strip().splitlines() == [err.strip().splitlines()[-1]]
    assert err.strip().splitlines()[-1].startswith(last_line)
    assert os.listdir(tmp_path) == []


def test_eval_graphs_off_cuda_evaluates_exactly_as_without(evaluation, straight_run, phantom):
    # eval_graphs wraps the model in GraphedPredict, which runs eagerly off CUDA: the same
    # numbers as the evaluation without it (the session's, with the same checkpoint and batch size).
    _, runs_dir = straight_run
    _, without_dir = evaluation
    without = json.load(open(os.path.join(without_dir, "results.json")))
    assert without["evaluation"]["eval_graphs"] is False
    run = run_test(base_config(phantom, runs_dir, checkpoint=os.path.join(runs_dir, "train"), eval_graphs=True,
                               eval_batch_size=2, test_classes=[6], save_predictions=False, save_figures=False))
    results = json.load(open(os.path.join(run.observers[0].dir, "results.json")))
    assert results["evaluation"]["eval_graphs"] is True   # recorded with the result
    assert results["protocol"]["checkpoint"] == without["protocol"]["checkpoint"]
    assert results["supports"]["0"]["classes"]["6"] == without["supports"]["0"]["classes"]["6"]


# ----------------------------------------------------------------------------- issue 18


def _copy_phantom(phantom, folder):
    import shutil
    shutil.copytree(phantom, folder)
    return str(folder)


def test_a_checkpoint_trained_on_the_evaluated_fold_is_refused(straight_run, phantom, tmp_path, capsys):
    straight, runs_dir = straight_run
    # The run held out fold 0 (volumes 0, 1, 2); fold 1 holds volumes 2, 3, 4, and it trained on 3 and 4.
    with pytest.raises(ValueError, match=r"was trained on fold 0's training volumes, which include volume\(s\) "
                                         r"3 \(image_3.nii.gz\), 4 \(image_4.nii.gz\) of evaluated fold 1, so its "
                                         r"scores would measure training data.*allow_leakage=True"):
        run_test(base_config(phantom, str(tmp_path), checkpoint=straight.result, eval_fold=1))
    # A folder of runs gives only a run trained for the evaluated fold; none here.
    with pytest.raises(ValueError, match=r"no completed training run with model='fafnet', dataset='SYNTHETIC', "
                                         r"eval_fold=1, "
                                         r"setting=2, setting2_protocol='any' in it; found: run 1 \(.*eval_fold=0"):
        run_test(base_config(phantom, str(tmp_path), checkpoint=os.path.join(runs_dir, "train"), eval_fold=1))
    # allow_leakage=True evaluates it, records it, and the fold table refuses the run.
    run = run_test(base_config(phantom, str(tmp_path), checkpoint=straight.result, eval_fold=1, allow_leakage=True,
                               test_classes=[6], save_predictions=False, save_figures=False))
    leakage = json.load(open(os.path.join(run.observers[0].dir, "results.json")))["protocol"]["leakage"]
    assert leakage["status"] == "overlap" and leakage["overlap"] == [3, 4] and leakage["allow_leakage"] is True
    from fafnet.cli import results as utils
    assert utils.main(["aggregate", run.observers[0].dir]) == 2
    assert "trained on volume(s) [3, 4] of evaluated fold 1 (evaluated with allow_leakage=True)" in \
        capsys.readouterr().err


def test_an_older_snapshot_is_evaluated_with_a_leakage_warning(straight_run, phantom, tmp_path, caplog):
    straight, _ = straight_run
    older = model_state(step_path(straight.observers[0].dir, 2))
    del older["training_data"]                               # as snapshots before issue 18
    path = str(tmp_path / "older.pth")
    torch.save(older, path)
    run = run_test(base_config(phantom, str(tmp_path), checkpoint=path, eval_fold=1, test_classes=[6],
                               save_predictions=False, save_figures=False))
    leakage = json.load(open(os.path.join(run.observers[0].dir, "results.json")))["protocol"]["leakage"]
    assert leakage["status"] == "unchecked" and "eval_fold=0" in leakage["reason"]
    assert "test-set leakage cannot be checked" in caplog.text


def test_resume_on_other_data_is_refused_naming_the_file(straight_run, phantom, tmp_path):
    straight, _ = straight_run
    other = _copy_phantom(phantom, tmp_path / "other")
    image, geometry = read_volume(os.path.join(other, "image_5.nii.gz"))
    image[0, 0, 0] += 1.0
    write_volume(image, geometry, os.path.join(other, "image_5.nii.gz"))
    with pytest.raises(ValueError, match=r"was trained on other data than data_dir=.*other.* holds: image_5.nii.gz "
                                         r"has another sha256 .*resume_other_data=True"):
        run_train(base_config(other, str(tmp_path / "runs"), resume=straight.observers[0].dir, n_steps=6))


def test_resume_other_data_continues_and_says_what_differed():
    logged = []

    class Log:
        def warning(self, *args):
            logged.append(args[0] % args[1:])

    saved = {"files": [{"name": "image_3.nii.gz", "sha256": "a" * 64}]}
    now = {"files": [{"name": "image_3.nii.gz", "sha256": "b" * 64}]}
    config = {"resume": "runs/train/1", "data_dir": "/data", "resume_other_data": True}
    record = training_loop.check_resumed_data(config, {"path": "latest.pth", "training_data": saved}, now, Log())
    assert record["resume_other_data"] is True and record["differences"][0].startswith("image_3.nii.gz has another")
    assert "continuing latest.pth on other data: image_3.nii.gz" in logged[0]
    with pytest.raises(ValueError, match="image_3.nii.gz has another sha256"):
        training_loop.check_resumed_data({**config, "resume_other_data": False},
                                        {"path": "latest.pth", "training_data": saved}, now, Log())


def test_non_finite_weights_stop_training_before_a_snapshot(phantom, tmp_path, monkeypatch):
    """Weights can turn NaN/inf while the losses stay finite (lr=1e999 did; here an unused layer4
    weight is set to inf after each update): no snapshot with them is written and the run fails."""
    class PoisoningSGD(torch.optim.SGD):
        def step(self, closure=None):
            result = super().step(closure)
            with torch.no_grad():
                self.poisoned.fill_(float("inf"))
            return result

    def poisoning_optimizer(model, config, device=torch.device("cpu")):
        optimizer = PoisoningSGD(model.parameters(), lr=config["lr"], momentum=config["momentum"])
        optimizer.poisoned = model.encoder.backbone.layer4[0].conv1.weight
        return optimizer

    monkeypatch.setattr(training_loop, "build_optimizer", poisoning_optimizer)
    runs_dir = str(tmp_path / "runs")
    with pytest.raises(FloatingPointError, match=r"step 2: 1 of \d+ tensors \(parameters and buffers\) hold NaN "
                                                 r"or infinite values \(first: encoder.backbone.layer4.0.conv1.weight\); "
                                                 r"the snapshot was not written; training stopped. Last good "
                                                 r"snapshot: none written yet"):
        run_train(base_config(phantom, runs_dir, n_steps=2))
    run_dir = os.path.join(runs_dir, "train", "1")
    assert json.load(open(os.path.join(run_dir, "run.json")))["status"] == "FAILED"
    folder = os.path.join(run_dir, "snapshots")
    assert not os.path.isdir(folder) or not os.listdir(folder)


def test_evaluation_refuses_non_finite_weights_and_names_the_size_a_state_dict_fits(straight_run, tmp_path):
    straight, _ = straight_run
    weights = model_state(straight.result)["model"]
    plain = str(tmp_path / "plain.pth")
    torch.save(weights, plain)
    assert SIZE == 33   # the phantom's size, in the message below
    other_size = build_model("fafnet", (41, 41))
    with pytest.raises(ValueError, match=r"plain.pth does not fit image_size=\[41, 41\]: its weights were made for "
                                         r"9 x 9 feature maps, i.e. image_size=\[33, 33\] \(any of 33..36 by "
                                         r"33..36\); evaluate it with image_size=\[33, 33\]"):
        load_for_evaluation(other_size, plain, (41, 41))
    weights["icm.out_proj.bias"][0] = float("nan")
    weights["encoder.threshold_head.0.weight"].fill_(float("inf"))
    torch.save(weights, plain)
    model = build_model("fafnet", (SIZE, SIZE))
    with pytest.raises(FloatingPointError, match=r"checkpoint .*plain.pth: 2 of \d+ tensors \(parameters and "
                                                 r"buffers\) hold NaN or infinite values"):
        load_for_evaluation(model, plain, (SIZE, SIZE))


def test_a_skipped_class_is_marked_and_nothing_evaluated_fails(phantom, tmp_path, capsys):
    data = _copy_phantom(phantom, tmp_path / "no_liver_in_support")
    label, geometry = read_volume(os.path.join(data, "label_0.nii.gz"), dtype=np.uint8)
    label[label == 6] = 0                                   # volume 0, the support, has no liver
    write_volume(label, geometry, os.path.join(data, "label_0.nii.gz"))
    runs = str(tmp_path / "runs")
    run = run_test(base_config(data, runs, checkpoint="untrained", save_predictions=False, save_figures=False))
    results = json.load(open(os.path.join(run.observers[0].dir, "results.json")))
    assert results["classes"]["6"]["dice_mean"] is None and results["mean_classes"] == ["1"]
    assert results["mean_dice"] == results["classes"]["1"]["dice_mean"]
    out = capsys.readouterr().out
    assert "| liver * | n/a | n/a | 0 |" in out and "| **mean** of 1 of 2 classes (spleen) |" in out
    csv_last = open(os.path.join(run.observers[0].dir, "results.csv")).read().splitlines()[-1]
    assert csv_last.startswith("all,mean,,all,mean over 1 of 2 classes (spleen),")
    from fafnet.cli import results as utils
    assert utils.main(["aggregate", run.observers[0].dir]) == 0      # the fold table marks it
    assert "n/a *" in capsys.readouterr().out
    # Only the liver: nothing can be evaluated. The run fails, results.json still shows why.
    with pytest.raises(ValueError, match=r"no test class could be evaluated \(1 skip\(s\), first: class 6, "
                                         r"support volume 0 \(image_0\.nii\.gz\): class 6 does not occur"):
        run_test(base_config(data, runs, checkpoint="untrained", test_classes=[6], save_predictions=False,
                             save_figures=False))
    failed = os.path.join(runs, "test", "2")
    assert json.load(open(os.path.join(failed, "run.json")))["status"] == "FAILED"
    assert json.load(open(os.path.join(failed, "results.json")))["skipped"][0]["class_id"] == 6
    assert "must be real number" not in capsys.readouterr().err


def _train_argv(data_dir, runs_dir, **options):
    values = {**TRAINING, **base_config(data_dir, runs_dir), **options}
    return ["train.py", "with", "SYNTHETIC"] + [f"{k}={json.dumps(v) if not isinstance(v, str) else v}"
                                               for k, v in values.items()]


def test_a_full_disk_is_the_last_line(phantom, tmp_path, monkeypatch, capsys):
    import shutil
    from collections import namedtuple

    def no_space(obj, path, *args, **kwargs):   # what torch's zip writer raises on a full disk
        raise RuntimeError("[enforce fail at inline_container.cc:595] . unexpected pos 123 vs 456")

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(torch, "save", no_space)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10 << 30, (10 << 30) - 4096, 4096))
    runs_dir = str(tmp_path / "runs")
    status, _, err = command_line(train_script, *_train_argv(phantom, runs_dir, n_steps=1)[1:], capsys=capsys)
    assert status == 2       # an OSError: the user's to act on, one line
    last = err.strip().splitlines()[-1]
    folder = os.path.join(runs_dir, "train", "1", "snapshots")
    assert last.startswith(f"train.py: error: [Errno 28] no space left on {folder}: the snapshot final.pth "
                           f"was not written")


def test_sigterm_interrupts_a_run_that_can_be_resumed_at_once(phantom, tmp_path):
    """A real train.py process, sent SIGTERM after its first snapshot: run.json says
    INTERRUPTED (not RUNNING for 300 s), and the pid was in info.json before Sacred's first
    heartbeat. Its run.json lists the command's sources (a process that imports only what the
    command imports: the engine's modules must be there too)."""
    import signal
    import subprocess
    import time

    from fafnet.runtime.runs import run_status
    from fafnet.runtime.resume import load_for_resume
    runs_dir = str(tmp_path / "runs")
    argv = _train_argv(phantom, runs_dir, n_steps=1000, snapshot_interval=1, keep_snapshots="none")
    process = subprocess.Popen([sys.executable] + argv, cwd=ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    run_dir = os.path.join(runs_dir, "train", "1")
    info = os.path.join(run_dir, "info.json")
    try:
        deadline = time.monotonic() + 240
        while not os.path.isfile(info) and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert json.load(open(info))["pid"] == process.pid
        assert json.load(open(os.path.join(run_dir, "run.json")))["heartbeat"] is None
        while not os.path.isfile(latest_path(run_dir)) and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert os.path.isfile(latest_path(run_dir))
        process.send_signal(signal.SIGTERM)
        stderr = process.communicate(timeout=120)[1]
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 143
    assert stderr.strip().splitlines()[-1].startswith("train.py: terminated (SIGTERM); the run is recorded as "
                                                      "INTERRUPTED")
    assert json.load(open(os.path.join(run_dir, "run.json")))["status"] == "INTERRUPTED"
    assert run_status(run_dir) == "INTERRUPTED"
    path, state = load_for_resume(run_dir)                   # not refused as still running
    assert path == latest_path(run_dir) and state["step"] >= 1
    assert_run_json_names_its_sources(run_dir, "fafnet/cli/train.py", TRAINING_SOURCES)
