"""The shell scripts pass options the experiments accept.

Each script runs with a stand-in python that records its calls; every recorded `train.py` or
`test.py` call is then checked by the real experiment in this process: its words parsed as the
command line parses them (fafnet.cli.experiment.parse_updates) and run as `print_config`,
which refuses an option config.py does not define, a 0.5 option path, an option given twice
and any value its rule refuses. This catches a script passing a misspelt or renamed option.
"""
import pytest

from fafnet.cli.experiment import parse_updates
from tests.helpers import experiment_for, run_script

RECORDING_PYTHON = """#!/usr/bin/env bash
# Stands in for python: records each call (one argument per line, calls separated by a line
# holding only ---) and leaves the run folders the scripts look for.
printf '%s\\n' "$@" --- >> "$CALLS"
for a in "$@"; do
    [[ "$a" == runs_dir=* && "$1" == train.py ]] && mkdir -p "${a#runs_dir=}/train/1"
    [[ "$a" == runs_dir=* && "$1" == test.py ]] && mkdir -p "${a#runs_dir=}/test/1"
done
exit 0
"""


def recorded_experiment_calls(script, tmp_path, **env):
    """Run script/<script> with the recording python; return the argument lists of its
    train.py and test.py calls."""
    result, lines = run_script(script, tmp_path, RECORDING_PYTHON, DEMO_DIR=str(tmp_path / "demo"),
                               OUT=str(tmp_path / "out"), **env)
    assert result.returncode == 0, result.stderr
    calls, current = [], []
    for line in lines:
        if line == "---":
            calls.append(current)
            current = []
        else:
            current.append(line)
    return [call for call in calls if call and call[0] in ("train.py", "test.py")]


def assert_experiment_accepts(call):
    script, with_word, *words = call
    assert with_word == "with", call
    command = "train" if script == "train.py" else "evaluate"
    try:
        updates, named_configs = parse_updates(words)
        experiment_for(command).run("print_config", named_configs=named_configs, config_updates=updates)
    except (ValueError, KeyError) as err:
        raise AssertionError(f"{script} refused the options {words}: {err}") from None


@pytest.mark.parametrize("script, env, expected", [
    ("demo.sh", {}, ["train.py", "test.py", "test.py"]),
    ("train.sh", {"FOLDS": "0", "DATASET": "SYNTHETIC"}, ["train.py"]),
    ("train.sh", {"FOLDS": "0", "SETTING": "2", "PROTOCOL": "groups", "DATASET": "SYNTHETIC"},
     ["train.py", "train.py"]),
    ("evaluate.sh", {"FOLDS": "0", "DATASET": "SYNTHETIC", "SUPP_IDX": "0 1"}, ["test.py"]),
    # Without snapshots on disk the glob stays a pattern: one evaluation for it, one for final.pth.
    ("real_cmr.sh", {"DATA_ROOT": "/data/CMR"}, ["train.py", "test.py", "test.py"]),
    ("real_cmr.sh", {"DATA_ROOT": "/data/CMR", "SIZE": "none", "EXTRA": "amp_bf16=True",
                     "TRAIN_EXTRA": "cuda_graph=True channels_last=True"}, ["train.py", "test.py", "test.py"]),
    ("real_data.sh", {"DATA_ROOT": "/data", "DATASET": "CHAOST2"}, ["train.py", "test.py", "test.py"]),
    ("real_data.sh", {"DATA_ROOT": "/data", "DATASET": "CMR", "MODEL": "adnet", "THREADS": "2"},
     ["train.py", "test.py", "test.py"]),
])
def test_scripts_pass_only_options_the_experiments_declare(script, env, expected, tmp_path):
    calls = recorded_experiment_calls(script, tmp_path, **env)
    assert [call[0] for call in calls] == expected
    for call in calls:
        assert_experiment_accepts(call)
    if "DATASET" in env and script == "real_data.sh":
        assert all(f"dataset={env['DATASET']}" in call for call in calls)


@pytest.mark.parametrize("words, refused", [
    (["SYNTHETIC", "supervoxel_min=200"], "supervoxel_min: no such option"),     # a misspelt option
    (["SYNTHETIC", "zero_init_residual=True"], "one of FAF-Net's model options since 0.6"),   # 0.5's name
    (["SYNTHETIC", "dataset.eval_fold=1"], "options have flat names since 0.6"),   # 0.5's path
    (["SYNTHETIC", "eval_fold=1", "eval_fold=2"], "eval_fold is given twice"),
    (["SYNTHETIC", "n_part=0"], "n_part=0 must be an integer"),
])
def test_an_option_the_experiment_does_not_take_is_refused_by_the_check(words, refused):
    with pytest.raises(AssertionError, match=refused):
        assert_experiment_accepts(["test.py", "with", *words])


@pytest.mark.parametrize("script, env", [("demo.sh", {}), ("real_cmr.sh", {"DATA_ROOT": "/data/CMR"}),
                                         ("real_data.sh", {"DATA_ROOT": "/data", "DATASET": "CHAOST2"})])
def test_random_start_options_follow_random_start_and_pretrained(script, env, tmp_path):
    demo_options = {"model_options.zero_init_residual=True", "model_options.threshold_head_init_scale=0.05"}
    for case, (extra, expected) in enumerate((({}, True), ({"RANDOM_START": "release"}, False),
                                              ({"PRETRAINED": "/weights.pth"}, False))):
        folder = tmp_path / str(case)
        folder.mkdir()
        calls = recorded_experiment_calls(script, folder, **env, **extra)
        train = next(call for call in calls if call[0] == "train.py")
        assert (demo_options <= set(train)) is expected, (extra, train)
        assert_experiment_accepts(train)
