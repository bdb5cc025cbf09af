"""What replaced 0.5's option groups (Sacred ingredients): one flat config (the root config.py)
whose every option has one rule in fafnet.runtime.options, the flat record of older grouped
and flat configs, flat names on the command line of train.py and test.py alike, and errors
that name the option by that name. (tests/test_config.py covers config.py itself, the 0.5
paths refused, and one-line errors.)"""
import os

import pytest
from sacred import SETTINGS

from fafnet.cli import evaluate, train
from fafnet.cli.experiment import default_options
from fafnet.runtime.options import LEGACY_MODEL_OPTIONS, RULES, check_options, flat_record
from tests.helpers import command_line, experiment_for, options_of


def test_every_option_has_one_rule_and_every_rule_an_option():
    options = {k for k in default_options() if not k.startswith("__")}
    assert set(RULES) == options
    # The defaults, as every named dataset sets them, pass every rule (training's own too).
    for dataset in ("SABS", "CHAOST2", "CMR", "Prostate_MRI", "SYNTHETIC"):
        config = options_of("train", dataset, pretrained_weights="none")
        check_options(config, "train")
        check_options(config, "evaluate")


def test_training_rules_apply_to_training_only():
    config = options_of("evaluate", "CMR", pretrained_weights=None)
    check_options(config, "evaluate")          # evaluation builds the checkpoint's weights
    with pytest.raises(ValueError, match="config option pretrained_weights is not set: training on CMR"):
        check_options(config, "train")


def test_a_grouped_config_of_0_5_reads_as_the_flat_options():
    """config.json of 0.5 grouped the options by concern (an option `name` in a group was the
    option named after the group); FAF-Net's initialisation options became model options."""
    grouped = {"seed": 7, "num_workers": 0, "__doc__": "scope text",
               "dataset": {"name": "CMR", "eval_fold": 2, "image_size": [256, 256], "__doc__": "x"},
               "episodes": {"min_size": 200}, "model": {"name": "fafnet", "zero_init_residual": True,
                                                        "threshold_head_init_scale": 0.05},
               "optimisation": {"lr": 1e-3, "lr_milestones": [3000]}, "runtime": {"device": "cpu"},
               "evaluation": {"n_part": 3}}
    assert flat_record(grouped) == {
        "seed": 7, "num_workers": 0, "dataset": "CMR", "eval_fold": 2, "image_size": [256, 256], "min_size": 200,
        "model": "fafnet", "lr": 1e-3, "lr_milestones": [3000], "device": "cpu", "n_part": 3,
        "model_options": {"zero_init_residual": True, "threshold_head_init_scale": 0.05}}


def test_a_flat_config_of_0_4_and_of_0_6_read_unchanged():
    old = {"dataset": "SABS", "model": "fafnet", "eval_fold": 1, "n_steps": 42000, "zero_init_residual": False}
    assert flat_record(old) == {"dataset": "SABS", "model": "fafnet", "eval_fold": 1, "n_steps": 42000,
                                "model_options": {"zero_init_residual": False}}
    # Another model's record keeps no FAF-Net option; 0.6's record is its own flat record.
    assert flat_record({"model": "adnet", "zero_init_residual": True})["model_options"] == {}
    current = options_of("train", "SYNTHETIC")
    assert flat_record(current) == {k: v for k, v in current.items() if not k.startswith("__")}
    assert not set(LEGACY_MODEL_OPTIONS) & set(current)


def test_the_dataset_option_selects_the_dataset_like_the_named_config():
    by_option = options_of("train", dataset="CHAOST2")
    by_name = options_of("train", "CHAOST2")
    assert {k: v for k, v in by_option.items() if k != "__doc__"} == {k: v for k, v in by_name.items()
                                                                       if k != "__doc__"}
    assert by_option["dataset"] == "CHAOST2" and by_option["supervoxel_min_size"] == by_name["supervoxel_min_size"]


def test_both_commands_take_the_same_flat_options(tmp_path, capsys):
    for module in (train, evaluate):
        status, out, err = command_line(module, "print_config", "with", "SYNTHETIC", "eval_fold=3", "lr=0.5",
                                        "n_part=2", f"runs_dir={tmp_path}", capsys=capsys, fresh=False)
        assert status == 0, err
        assert "eval_fold = 3" in out and "lr = 0.5" in out and "n_part = 2" in out
    # test.py accepts training options (one config); an unknown option is still refused.
    status, _, err = command_line(evaluate, "print_config", "with", "SYNTHETIC", "supervoxel_min_size=200",
                                  capsys=capsys, fresh=False)
    assert status == 0, err
    status, _, err = command_line(evaluate, "print_config", "with", "SYNTHETIC", "supervoxel_min=200", capsys=capsys,
                                  fresh=False)
    assert status == 2 and "test.py: error: config option supervoxel_min: no such option" in err


@pytest.mark.parametrize("command, updates, message", [
    ("train", {"eval_fold": 5}, r"^config option eval_fold=5 must be 0, 1, 2, 3 or 4$"),
    ("evaluate", {"model": "unet"}, r"^config option model='unet' is not a registered model"),
    ("evaluate", {"n_part": 0}, r"^config option n_part=0 must be an integer from 1 to 1000$"),
    ("train", {"snapshot_interval": 0}, r"^config option snapshot_interval=0 must be an integer from 1 to"),
    # A rule across two options, after each option's own check.
    ("train", {"resample_in_plane": [64, 64], "image_size": [65, 65]},
     r"^config option image_size=\[65, 65\] differs from resample_in_plane=\[64, 64\]"),
])
def test_an_error_names_the_option_by_its_flat_name(command, updates, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        experiment_for(command).run(config_updates={"runs_dir": str(tmp_path), **updates})
    assert os.listdir(tmp_path) == []


def test_experiments_are_fresh_and_leave_sacreds_settings_as_set():
    before = SETTINGS.CAPTURE_MODE, SETTINGS.DISCOVER_SOURCES, SETTINGS.DISCOVER_DEPENDENCIES
    first, second = train.experiment(), experiment_for("train")
    assert first is not second and first.observers is not second.observers
    # Sacred's own discovery is off: each run's config hook gathers the same sources and packages.
    assert (SETTINGS.CAPTURE_MODE, SETTINGS.DISCOVER_SOURCES, SETTINGS.DISCOVER_DEPENDENCIES) == before \
        == ("sys", "none", "none")
    assert set(first.named_configs) == {"SABS", "CHAOST2", "CMR", "Prostate_MRI", "SYNTHETIC", "adnet", "ssl_alpnet",
                                        "cpu_recipe"}
